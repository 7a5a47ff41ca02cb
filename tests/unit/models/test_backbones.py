"""Backbones, pooling, frozen BatchNorm, local weight files, and the multi-head Embedder."""

import pytest
import torch

from deepmetric.models import Embedder, build_backbone, load_weights


@pytest.mark.parametrize("name,channels,size", [("small_cnn", 1, 28), ("small_resnet", 3, 32), ("small_resnet", 1, 64)])
@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_forward_and_backward(name, channels, size, pooling):
    backbone = build_backbone(name, in_channels=channels, pooling=pooling, width=8)
    x = torch.randn(3, channels, size, size)
    features = backbone(x)
    assert features.shape == (3, backbone.out_features)
    features.sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_avg_plus_max_is_the_sum():
    torch.manual_seed(0)
    avg = build_backbone("small_cnn", in_channels=1, width=4, pooling="avg")
    both = build_backbone("small_cnn", in_channels=1, width=4, pooling="avg+max")
    mx = build_backbone("small_cnn", in_channels=1, width=4, pooling="max")
    both.load_state_dict(avg.state_dict())
    mx.load_state_dict(avg.state_dict())
    x = torch.randn(2, 1, 28, 28)
    for m in (avg, both, mx):
        m.eval()
    assert torch.allclose(both(x), avg(x) + mx(x), atol=1e-6)


def test_frozen_batchnorm_keeps_statistics_but_trains_affine():
    backbone = build_backbone("small_cnn", in_channels=1, width=4, freeze_bn=True)
    bn = backbone.trunk[0][1]
    before = bn.running_mean.clone()
    backbone.train()
    out = backbone(torch.randn(4, 1, 28, 28) * 3 + 2)
    assert torch.equal(bn.running_mean, before) and not bn.training
    out.sum().backward()
    assert bn.weight.grad is not None and bn.weight.requires_grad
    unfrozen = build_backbone("small_cnn", in_channels=1, width=4)
    unfrozen(torch.randn(4, 1, 28, 28) + 2)
    assert not torch.equal(unfrozen.trunk[0][1].running_mean, before)


def test_local_weight_file_round_trip(tmp_path):
    src = build_backbone("small_resnet", in_channels=3, width=8)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.trunk.state_dict().items()}}, path)
    loaded = build_backbone("small_resnet", in_channels=3, width=8, weights=str(path))
    for a, b in zip(src.trunk.state_dict().values(), loaded.trunk.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_weight_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("small_cnn", weights=str(tmp_path / "none.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save(build_backbone("small_cnn", in_channels=1, width=8).trunk.state_dict(), wrong)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone("small_cnn", in_channels=1, width=16, weights=str(wrong))
    with pytest.raises(ValueError, match="missing keys"):
        load_weights(build_backbone("small_resnet", width=8).trunk, wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_backbone("small_cnn", weights=str(garbage))


def test_unknown_backbone_and_pretrained_without_hub():
    with pytest.raises(ValueError, match=r"unknown backbone 'small_cnm'; did you mean \['small_cnn'"):
        build_backbone("small_cnm")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("small_cnn", pretrained=True)
    with pytest.raises(ValueError, match="pooling"):
        build_backbone("small_cnn", pooling="gem")


def test_timm_adapter_needs_timm():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"deepmetric\[timm\]"):
            build_backbone("timm:resnet18")
    else:  # pragma: no cover - GPU machines with timm installed
        backbone = build_backbone("timm:resnet18", in_channels=3)
        assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.out_features)


def test_embedder_heads_and_normalisation():
    backbone = build_backbone("small_cnn", in_channels=1, width=4)
    emb = Embedder(backbone, {"discriminative": 8, "shared": 8, "raw": 0}, normalize={"raw": False})
    out = emb(torch.randn(5, 1, 28, 28))
    assert set(out) == {"discriminative", "shared", "raw"}
    assert out["shared"].shape == (5, 8) and out["raw"].shape == (5, backbone.out_features)
    assert torch.allclose(out["discriminative"].norm(dim=1), torch.ones(5), atol=1e-5)
    assert emb.dims == {"discriminative": 8, "shared": 8, "raw": backbone.out_features}
    with pytest.raises(ValueError, match="unknown head"):
        Embedder(backbone, {"a": 4}, normalize={"b": True})
    with pytest.raises(ValueError, match="non-negative"):
        Embedder(backbone, {"a": -1})


def test_flatten_pooling_keeps_the_spatial_layout():
    backbone = build_backbone("small_cnn", in_channels=1, width=4, pooling="flatten", input_size=28)
    assert backbone.out_features == 16 * 7 * 7
    x = torch.randn(2, 1, 28, 28)
    assert backbone(x).shape == (2, 16 * 7 * 7)
    with pytest.raises(ValueError, match="input shape"):
        build_backbone("small_cnn", pooling="flatten")


def test_timm_weights_load_into_the_timm_model_itself(tmp_path, monkeypatch):
    """A timm checkpoint has the timm model's keys; the adapter must not expect its own 'model.' prefix."""
    import sys
    import types

    class FakeTimmModel(torch.nn.Module):
        num_features = 6

        def __init__(self, in_chans):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_chans, 6, 3)

        def forward_features(self, x):
            return self.conv(x)

    fake = types.SimpleNamespace(
        list_models=lambda pretrained=False: ["tiny"],
        create_model=lambda name, pretrained, num_classes, global_pool, in_chans: FakeTimmModel(in_chans),
    )
    monkeypatch.setitem(sys.modules, "timm", fake)
    source = FakeTimmModel(3)
    torch.save(source.state_dict(), tmp_path / "tiny.pth")  # keys: conv.weight, conv.bias
    backbone = build_backbone("timm:tiny", weights=str(tmp_path / "tiny.pth"))
    assert torch.equal(backbone.trunk.model.conv.weight, source.conv.weight)
    assert backbone(torch.randn(2, 3, 8, 8)).shape == (2, 6)

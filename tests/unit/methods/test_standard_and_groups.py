"""Loss/miner names, constructor auto-fill, and optimizer groups that cannot leave parameters out."""

import pytest
import torch

from deepmetric.methods import StandardMethod, check_param_groups
from deepmetric.models import Embedder, build_backbone
from deepmetric.registry import build_loss, build_miner, resolve


def test_names_resolve_in_every_spelling():
    from pytorch_metric_learning.losses import TripletMarginLoss

    for name in ("triplet_margin", "TripletMargin", "TripletMarginLoss", "triplet-margin-loss"):
        assert resolve("loss", name) is TripletMarginLoss
    assert resolve("miner", "distance_weighted").__name__ == "DistanceWeightedMiner"


def test_unknown_names_list_the_closest():
    with pytest.raises(ValueError, match=r"closest: \['tripletmargin'"):
        resolve("loss", "triplet_margn")
    with pytest.raises(ValueError, match="unknown miner"):
        build_miner("semihardest")
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['margin_pos'\]"):
        build_loss("contrastive", {"margin_pos": 1.0}, num_classes=3, embedding_size=8)
    with pytest.raises(ValueError, match=r"without a miner\.name"):
        build_miner(None, {"epsilon": 0.1})


def test_required_arguments_are_filled_from_data_and_model():
    loss = build_loss("proxy_anchor", {"margin": 0.1}, num_classes=7, embedding_size=16)
    assert loss.proxies.shape == (7, 16)
    margin = build_loss("margin", {"learn_beta": True, "num_classes": "auto"}, num_classes=5, embedding_size=16)
    assert margin.beta.shape == (5,)


def _method(loss_name, **params):
    model = Embedder(build_backbone("small_cnn", in_channels=1, width=4), {"embedding": 16})
    loss = build_loss(loss_name, params, num_classes=5, embedding_size=16)
    return StandardMethod(model, loss, loss_lr_mult=100.0, loss_weight_decay=0.0)


def test_proxies_join_the_optimizer_with_their_multiplier():
    method = _method("proxy_anchor")
    groups = {g["name"]: g for g in method.param_groups(lr=1e-3, weight_decay=1e-4)}
    assert set(groups) == {"backbone", "heads", "loss"}
    assert groups["loss"]["lr"] == pytest.approx(0.1) and groups["loss"]["weight_decay"] == 0.0
    assert groups["loss"]["params"][0] is method.loss.proxies
    opt = torch.optim.Adam(method.param_groups(1e-3, 0.0))
    before = method.loss.proxies.detach().clone()
    out = method.training_step({"views": [torch.randn(10, 1, 28, 28)], "label": torch.arange(5).repeat(2)})
    out["loss"].backward()
    opt.step()
    assert not torch.equal(before, method.loss.proxies)


def test_a_parameter_left_out_is_an_error():
    method = _method("proxy_anchor")
    groups = [g for g in method.param_groups(1e-3, 0.0) if g["name"] != "loss"]
    with pytest.raises(RuntimeError, match=r"left out of the optimizer: \['loss.proxies'\]"):
        check_param_groups(method, groups)
    groups = method.param_groups(1e-3, 0.0)
    groups.append({"name": "again", "params": groups[0]["params"][:1]})
    with pytest.raises(RuntimeError, match="two optimizer groups"):
        check_param_groups(method, groups)


def test_standard_method_wants_one_head():
    model = Embedder(build_backbone("small_cnn", in_channels=1, width=4), {"a": 4, "b": 4})
    with pytest.raises(ValueError, match="one embedding head"):
        StandardMethod(model, build_loss("contrastive", {}, num_classes=2, embedding_size=4))

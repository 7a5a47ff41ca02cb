"""The loss contract, for every registered deepmetric loss and a representative set of PML's, built by name.

``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``: a finite scalar whose backward
works; an empty batch gives 0 (still differentiable, as PML's pair losses); one class only (no negatives),
singletons (no positives) and an explicit reference set all work. deepmetric's own losses also reject bad shapes
with errors that say what is wrong.
"""

import pytest
import torch
import torch.nn.functional as F

from deepmetric.losses import MetricLoss
from deepmetric.miners import DistanceWeightedTripletMiner
from deepmetric.registry import LOSSES, build_loss

DIM, CLASSES = 8, 12
OWN = sorted({cls: name for name, cls in reversed(LOSSES.items())}.values())  # one name per class
PML = ["contrastive", "triplet_margin", "multi_similarity", "ntxent", "circle", "supcon", "margin", "tuplet_margin"]


def build(name):
    return build_loss(name, {}, num_classes=CLASSES, embedding_size=DIM)


def batch(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    return F.normalize(torch.randn(len(labels), DIM, generator=g), dim=1).requires_grad_(), labels


def reference(seed=1, n=9):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, DIM, generator=g), dim=1), torch.arange(n) % 3


def call(loss, x, y, ref=None, ref_y=None):
    """The loss on a batch, with triplets from a miner when the loss needs them."""
    kwargs = {} if ref is None else {"ref_emb": ref, "ref_labels": ref_y}
    if getattr(loss, "indices", None) == "triplets":
        triplets = DistanceWeightedTripletMiner()(x, y, ref, ref_y, generator=torch.Generator().manual_seed(0))
        return loss(x, y, triplets, **kwargs)
    return loss(x, y, **kwargs)


def check_backward(loss, x, value):
    assert value.dim() == 0 and torch.isfinite(value), value
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in loss.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", OWN + PML)
def test_backward(name):
    loss = build(name)
    x, y = batch(torch.arange(4).repeat(3))
    value = call(loss, x, y)
    check_backward(loss, x, value)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", OWN + PML)
def test_empty_batch_is_a_zero_loss_with_a_gradient(name):
    loss = build(name)
    x, y = batch(torch.zeros(0, dtype=torch.long))
    value = call(loss, x, y)
    assert value.item() == 0 and value.requires_grad
    value.backward()
    assert x.grad is not None and x.grad.shape == (0, DIM)
    if name in OWN:  # connected to the loss's own parameters too: zero gradients, not missing ones
        assert all(p.grad is not None and not p.grad.any() for p in loss.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", OWN + PML)
@pytest.mark.parametrize("labels", [[5] * 6, list(range(6))], ids=["one_class", "singletons"])
def test_one_class_and_singletons(name, labels):
    loss = build(name)
    x, y = batch(labels, seed=2)
    check_backward(loss, x, call(loss, x, y))


@pytest.mark.parametrize("name", OWN + PML)
def test_explicit_reference_set(name):
    loss = build(name)
    x, y = batch(torch.arange(3).repeat(2), seed=3)
    ref, ref_y = reference()
    value = call(loss, x, y, ref, ref_y)
    check_backward(loss, x, value)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", OWN)
def test_own_losses_are_on_the_base_and_an_empty_reference_set_gives_zero(name):
    loss = build(name)
    assert isinstance(loss, MetricLoss)
    x, y = batch(torch.arange(3).repeat(2))
    value = call(loss, x, y, torch.zeros(0, DIM), torch.zeros(0, dtype=torch.long))
    assert value.item() == 0 and value.requires_grad


@pytest.mark.parametrize("name", OWN)
def test_own_losses_reject_bad_shapes_clearly(name):
    loss = build(name)
    x, y = batch(torch.arange(3).repeat(2))
    ref, ref_y = reference()
    bad = [
        ((x[0], y), "embeddings must be a 2-D tensor"),
        ((x, y[:-1]), r"one label per embedding: embeddings \(6, 8\), labels \(5,\)"),
        ((x, y.view(2, 3)), "labels must be a 1-D tensor"),
        ((x, None), "labels must be a 1-D tensor"),
        ((x, y, None, ref), "give both ref_emb and ref_labels, or neither"),
        ((x, y, None, None, ref_y), "give both ref_emb and ref_labels, or neither"),
        ((x, y, None, ref[:, :4], ref_y), r"ref_emb must be a 2-D tensor with the embeddings' dimension 8"),
        ((x, y, None, ref, ref_y[:-1]), r"one label per ref_emb row: ref_emb \(9, 8\), ref_labels \(8,\)"),
    ]
    triplets = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    for args, message in bad:
        if getattr(loss, "indices", None) == "triplets":  # past the miner check, to the shape checks
            args = (*args[:2], triplets, *args[3:])
        with pytest.raises(ValueError, match=message):
            loss(*args)


def test_what_a_loss_takes_from_a_miner_is_checked_first():
    x, y = batch([0, 0, 1, 1])
    with pytest.raises(ValueError, match="DivaMarginLoss needs triplets"):
        build("diva_margin")(x, y)
    with pytest.raises(ValueError, match=r"MarginContrastiveLoss takes a miner's triplets .* got 2 index tensors"):
        build("ccp_c2")(x, y, (torch.tensor([0]), torch.tensor([1])))

    class EveryPair(MetricLoss):
        def compute_loss(self, *args, **kwargs):
            return torch.zeros(())

    with pytest.raises(ValueError, match="EveryPair uses every pair; it takes no miner"):
        EveryPair()(x, y, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))


def test_every_own_class_is_covered():
    assert {type(build(name)) for name in OWN} == {cls for _, cls in LOSSES.items()}

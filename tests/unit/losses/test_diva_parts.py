"""DiVA's margin loss (per-class β, the reference normalisation) and gradient reversal, by hand."""

import math

import pytest
import torch

from deepmetric.losses import DivaMarginLoss, GradientReversal, reverse_gradient
from deepmetric.registry import build_loss


def unit(angle_deg):
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_margin_loss_by_hand_with_each_normalisation():
    x = torch.tensor([unit(0), unit(50), unit(90), unit(180)])
    y = torch.tensor([0, 0, 1, 1])
    # triplet 1: a=0 (class 0), p=1 at chord 0.845, n=2 at √2: both hinges inactive
    # triplet 2: a=2 (class 1), p=3 at √2 (ℓ⁺ = 0.414), n=1 at chord 0.684 (ℓ⁻ = 0.716)
    triplets = (torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2, 1]))
    loss = DivaMarginLoss(num_classes=2, margin=0.2, beta=1.2)
    d = lambda i, j: math.sqrt(sum((u - v) ** 2 for u, v in zip(x[i], x[j], strict=True)) + 1e-8)  # noqa: E731
    pos = [max(0, d(0, 1) - 1.2 + 0.2), max(0, d(2, 3) - 1.2 + 0.2)]
    neg = [max(0, 1.2 - d(0, 2) + 0.2), max(0, 1.2 - d(2, 1) + 0.2)]
    total = sum(pos) + sum(neg)
    assert pos[0] == 0 and neg[0] == 0 and pos[1] > 0 and neg[1] > 0
    assert loss(x, y, triplets).item() == pytest.approx(total / 1)  # one triplet with an active hinge
    loss.normalization = "active_terms"
    assert loss(x, y, triplets).item() == pytest.approx(total / 2)
    loss.normalization = "triplets"
    assert loss(x, y, triplets).item() == pytest.approx(total / 2)


def test_beta_is_per_class_and_learns():
    loss = DivaMarginLoss(num_classes=3, beta=1.2)
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    out = loss(x, y, (torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([4, 5])))
    out.backward()
    assert loss.beta.grad[2] == 0 and (loss.beta.grad[:2] != 0).any()  # only the anchors' classes
    fixed = DivaMarginLoss(num_classes=3, learn_beta=False)
    assert not fixed.beta.requires_grad


def test_no_active_triplet_and_no_triplet_give_zero_with_a_gradient():
    loss = DivaMarginLoss(num_classes=2, margin=0.0, beta=1.0)
    x = torch.tensor([unit(0), unit(10), unit(180)], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    out = loss(x, y, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))  # d_ap ≈ 0.17 < β, d_an = 2 > β
    assert out.item() == 0
    out.backward()
    empty = loss(x, y, (torch.tensor([], dtype=torch.long),) * 3)
    assert empty.item() == 0 and empty.requires_grad
    with pytest.raises(ValueError, match="triplets"):
        loss(x, y, None)


def test_registered_under_its_own_name():
    assert isinstance(build_loss("diva_margin", {}, num_classes=4, embedding_size=8), DivaMarginLoss)
    assert build_loss("margin", {}, num_classes=4, embedding_size=8).__class__.__module__.startswith(
        "pytorch_metric_learning"
    )


def test_gradient_reversal_is_identity_forward_and_negates_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))
    z = torch.randn(2, 2, requires_grad=True)
    GradientReversal()(z).sum().backward()
    assert torch.equal(z.grad, -torch.ones(2, 2))

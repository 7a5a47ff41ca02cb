"""CCP's four pair losses in proxy form: hand computations, a brute-force triplet loop, and PML parity."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml

from deepmetric.losses import (
    AllTripletsMarginLoss,
    CosineContrastiveLoss,
    MarginContrastiveLoss,
    PairMultiSimilarityLoss,
)
from deepmetric.registry import build_loss

# two anchors, three references: anchor 0 (label 0) has one positive (ref 0), anchor 1 (label 1) two (refs 1, 2)
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Y = torch.tensor([0, 1])
R = torch.tensor([[0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
RY = torch.tensor([0, 1, 1])
S = A @ R.T  # [[0.6, 0, -0.6], [0.8, 1, 0.8]]
D = torch.cdist(A, R)


def test_c1_by_hand():
    # positives: (0,0) s=.6 → 1−1e-5−.6; (1,1) s=1 → 0; (1,2) s=.8 → .2−1e-5. negatives: (0,1) s=0, (0,2) s=−.6, (1,0)
    # s=.8 → .8−.5 = .3. Sum over anchors' terms / B = 2.
    expected = ((0.4 - 1e-5) + (0.2 - 1e-5) + 0.3) / 2
    got = CosineContrastiveLoss(margin=0.5)(A, Y, ref_emb=R, ref_labels=RY)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_c2_averages_only_the_non_zero_terms():
    loss = MarginContrastiveLoss(pos_margin=0.1, neg_margin=1.2)
    d = D
    pos = [d[0, 0] - 0.1, d[1, 1] - 0.1, d[1, 2] - 0.1]  # d[1,1] = 0 → inactive
    neg = [1.2 - d[0, 1], 1.2 - d[0, 2], 1.2 - d[1, 0]]
    pos = [v for v in pos if v > 0]
    neg = [v for v in neg if v > 0]
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert loss(A, Y, ref_emb=R, ref_labels=RY).item() == pytest.approx(float(expected), abs=1e-5)


def test_ms_by_hand():
    a, b, lam = 2.0, 10.0, 0.5
    terms = []
    for i in range(2):
        pos = [S[i, j] for j in range(3) if RY[j] == Y[i]]
        neg = [S[i, j] for j in range(3) if RY[j] != Y[i]]
        terms.append(
            math.log(1 + sum(math.exp(-a * (float(s) - lam)) for s in pos)) / a
            + math.log(1 + sum(math.exp(b * (float(s) - lam)) for s in neg)) / b
        )
    got = PairMultiSimilarityLoss(alpha=a, beta=b, base=lam)(A, Y, ref_emb=R, ref_labels=RY)
    assert got.item() == pytest.approx(sum(terms) / 2, abs=1e-6)


def brute_force_triplet(x, y, ref, ref_y, margin, drop_self):
    d = torch.cdist(x, ref)
    values = []
    for i, p, n in itertools.product(range(len(x)), range(len(ref)), range(len(ref))):
        if ref_y[p] != y[i] or ref_y[n] == y[i] or (drop_self and p == i):
            continue
        v = float(d[i, p] - d[i, n] + margin)
        if v > 0:
            values.append(v)
    return sum(values) / max(len(values), 1)


@pytest.mark.parametrize("margin", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("with_ref", [True, False])
def test_memory_safe_triplet_equals_the_brute_force_loop(margin, with_ref):
    g = torch.Generator().manual_seed(int(margin * 100))
    x = F.normalize(torch.randn(10, 4, generator=g), dim=1)
    y = torch.randint(0, 3, (10,), generator=g)
    ref, ref_y = (F.normalize(torch.randn(9, 4, generator=g), dim=1), torch.arange(3).repeat(3)) if with_ref else (x, y)
    kwargs = {"ref_emb": ref, "ref_labels": ref_y} if with_ref else {}
    got = AllTripletsMarginLoss(margin)(x, y, **kwargs)
    assert got.item() == pytest.approx(brute_force_triplet(x, y, ref, ref_y, margin, not with_ref), abs=1e-5)


def test_triplet_gradient_equals_the_brute_force_gradient():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(6, 3, generator=g), dim=1).requires_grad_()
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    ref = F.normalize(torch.randn(6, 3, generator=g), dim=1)
    ref_y = torch.tensor([0, 1, 2, 0, 1, 2])
    AllTripletsMarginLoss(0.4)(x, y, ref_emb=ref, ref_labels=ref_y).backward()
    fast = x.grad.clone()
    x.grad = None
    d = torch.cdist(x, ref)
    terms = [d[i, p] - d[i, n] + 0.4 for i in range(6) for p in range(6) for n in range(6)
             if ref_y[p] == y[i] and ref_y[n] != y[i]]  # fmt: skip
    active = [t for t in terms if t > 0]
    (sum(active) / len(active)).backward()
    assert torch.allclose(fast, x.grad, atol=1e-5)


def test_triplet_never_builds_a_batch_by_references_by_references_tensor():
    x = F.normalize(torch.randn(32, 128), dim=1)
    ref = F.normalize(torch.randn(34_000, 128), dim=1)  # SOP-sized proxy set: B × R × R would be 148 GB of floats
    loss = AllTripletsMarginLoss(0.05)(x, torch.arange(32), ref_emb=ref, ref_labels=torch.arange(34_000) % 8_500)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("with_ref", [True, False])
def test_parity_with_pml(with_ref):
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(16, 8, generator=g), dim=1)  # unit vectors: PML's normalisation is then a no-op
    y = torch.randint(0, 4, (16,), generator=g)
    kw = {}
    if with_ref:
        kw = {"ref_emb": F.normalize(torch.randn(12, 8, generator=g), dim=1), "ref_labels": torch.arange(4).repeat(3)}
    pairs = [
        (MarginContrastiveLoss(0.1, 0.7), pml.ContrastiveLoss(pos_margin=0.1, neg_margin=0.7)),
        (PairMultiSimilarityLoss(2.0, 40.0, 0.5), pml.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5)),
        (AllTripletsMarginLoss(0.2), pml.TripletMarginLoss(margin=0.2)),
    ]
    for ours, theirs in pairs:
        assert ours(x, y, **kw).item() == pytest.approx(theirs(x, y, **kw).item(), abs=1e-5), type(ours).__name__


def test_registered_names_and_clear_errors():
    assert isinstance(build_loss("ccp_c2", {}, num_classes=3, embedding_size=4), MarginContrastiveLoss)
    assert isinstance(build_loss("margin_contrastive", {}, num_classes=3, embedding_size=4), MarginContrastiveLoss)
    assert isinstance(build_loss("pair_multi_similarity", {}, num_classes=3, embedding_size=4), PairMultiSimilarityLoss)
    with pytest.raises(ValueError, match="takes a miner's triplets"):
        MarginContrastiveLoss()(A, Y, (torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(ValueError, match="both ref_emb and ref_labels"):
        MarginContrastiveLoss()(A, Y, ref_emb=R)

"""deepmetric's pair losses on a miner's pairs (what EPS inside CCP needs): the same values and gradients as PML's twins
on the same indices; a miner's pairs as every (positive, negative) triplet of an anchor (EPS inside DiVA's margin
task), without the B × R × R tensor."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance

from deepmetric.losses import AllTripletsMarginLoss, DivaMarginLoss, MarginContrastiveLoss, PairMultiSimilarityLoss
from deepmetric.losses.base import pairs_to_triplets
from deepmetric.miners import EasyPositiveMiner

RAW = LpDistance(normalize_embeddings=False)
PAIRS = [
    (lambda: MarginContrastiveLoss(0.1, 0.7), lambda: pml.ContrastiveLoss(0.1, 0.7, distance=RAW)),
    (lambda: PairMultiSimilarityLoss(2.0, 40.0, 0.5),
     lambda: pml.MultiSimilarityLoss(2, 40, 0.5, distance=DotProductSimilarity(normalize_embeddings=False))),
    (lambda: AllTripletsMarginLoss(0.2), lambda: pml.TripletMarginLoss(0.2, distance=RAW)),
]  # fmt: skip


def data(seed=0, n=12, refs=None):
    g = torch.Generator().manual_seed(seed)
    x = 0.4 * torch.randn(n, 6, generator=g)
    y = torch.arange(3).repeat(n // 3)
    if refs is None:
        return x, y, {}
    return x, y, {"ref_emb": 0.4 * torch.randn(refs, 6, generator=g), "ref_labels": torch.arange(3).repeat(refs // 3)}


@pytest.mark.parametrize("refs", [None, 9], ids=["in_batch", "reference_set"])
@pytest.mark.parametrize("negatives", ["semihard", "all", "multi_similarity"])
@pytest.mark.parametrize("which", range(len(PAIRS)), ids=["c2", "ms", "triplet"])
def test_mined_pairs_match_pml_on_the_same_indices(which, negatives, refs):
    ours, theirs = PAIRS[which][0](), PAIRS[which][1]()
    x, y, kw = data(refs=refs)
    pairs = EasyPositiveMiner(negatives=negatives)(x, y, kw.get("ref_emb"), kw.get("ref_labels"))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    mine, expected = ours(a, y, pairs, **kw), theirs(b, y, pairs, **kw)
    assert mine.item() == pytest.approx(expected.item(), abs=1e-6)
    mine.backward()
    expected.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_triplets_are_used_as_their_pairs():
    x, y, _ = data()
    a = torch.tensor([0, 1])
    p, n = torch.tensor([3, 4]), torch.tensor([1, 2])
    loss = MarginContrastiveLoss(0.1, 0.7)
    assert loss(x, y, (a, p, n)).item() == pytest.approx(loss(x, y, (a, p, a, n)).item())


def test_pairs_to_triplets_is_every_positive_with_every_negative_of_an_anchor():
    g = torch.Generator().manual_seed(3)
    a1, p = torch.randint(0, 5, (9,), generator=g), torch.randint(0, 20, (9,), generator=g)
    a2, n = torch.randint(0, 5, (14,), generator=g), torch.randint(0, 20, (14,), generator=g)
    pos, neg = zip(a1.tolist(), p.tolist(), strict=True), zip(a2.tolist(), n.tolist(), strict=True)
    expected = sorted((i, j, k) for (i, j), (i2, k) in itertools.product(pos, neg) if i == i2)
    got = sorted(zip(*(t.tolist() for t in pairs_to_triplets(a1, p, a2, n)), strict=True))
    assert got == expected and len(got) > 0
    empty = pairs_to_triplets(a1, p, a2[:0], n[:0])
    assert all(t.numel() == 0 for t in empty)


def test_the_margin_loss_takes_eps_pairs_as_triplets():
    x, y, kw = data(refs=9)
    x = F.normalize(x, dim=1)
    pairs = EasyPositiveMiner(negatives="distance_weighted", negatives_per_anchor=2)(
        x, y, kw["ref_emb"], kw["ref_labels"], generator=torch.Generator().manual_seed(0)
    )
    loss = DivaMarginLoss(3)
    assert loss(x, y, pairs, **kw).item() == pytest.approx(loss(x, y, pairs_to_triplets(*pairs), **kw).item())

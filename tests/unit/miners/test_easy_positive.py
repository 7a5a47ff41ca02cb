"""EasyPositiveMiner against hand computations, a brute-force reference and PML's BatchEasyHardMiner."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from deepmetric.miners import EasyPositiveMiner


def on_circle(angles_deg):
    a = torch.tensor(angles_deg, dtype=torch.float32) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1)


def brute_force(x, y, negatives, fallback="drop", epsilon=0.1):
    """Per-anchor Python reference of the EPS rule (ties to the lowest index)."""
    x = F.normalize(x.double(), dim=1)
    d = torch.cdist(x, x)
    pos, neg = [], []
    for i in range(len(y)):
        cands = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        if not cands:
            continue
        p = min(cands, key=lambda j: (d[i, j].item(), j))
        negs = [k for k in range(len(y)) if y[k] != y[i]]
        if negatives == "all":
            chosen = negs
        elif negatives == "hard":
            chosen = [min(negs, key=lambda k: (d[i, k].item(), k))] if negs else []
        elif negatives == "multi_similarity":
            s = x @ x.T
            chosen = [k for k in negs if s[i, k] + epsilon > s[i, p]]
        else:  # semihard
            semi = [k for k in negs if d[i, k] > d[i, p]]
            if semi:
                chosen = [min(semi, key=lambda k: (d[i, k].item(), k))]
            elif fallback == "hardest" and negs:
                chosen = [min(negs, key=lambda k: (d[i, k].item(), k))]
            else:
                chosen = []
        if chosen:
            pos.append((i, p))
            neg += [(i, k) for k in chosen]
    return sorted(pos), sorted(neg)


def as_pairs(out):
    a1, p, a2, n = (t.tolist() for t in out)
    return sorted(zip(a1, p, strict=True)), sorted(zip(a2, n, strict=True))


def test_hand_built_batch():
    # class 0 at 0°, 10°, 100°; class 1 at 50°, 55°; class 2 alone at 200°
    x = on_circle([0, 10, 100, 50, 55, 200])
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    pos, neg = as_pairs(EasyPositiveMiner("hard")(x, y))
    assert pos == [(0, 1), (1, 0), (2, 1), (3, 4), (4, 3)]  # the singleton (index 5) is no anchor; 2's nearest is 1
    # hard negatives; from 55° the class-0 samples at 10° and 100° tie at 45°: the lower index (1) wins
    assert neg == [(0, 3), (1, 3), (2, 4), (3, 1), (4, 1)]


def test_self_is_excluded_and_ties_go_to_the_lowest_index():
    # anchor 0 at 0°; same-class samples at +20° (index 3) and −20° (index 1): equal distance
    x = on_circle([0, -20, 90, 20])
    y = torch.tensor([0, 0, 1, 0])
    pos, _ = as_pairs(EasyPositiveMiner("all")(x, y))
    assert (0, 1) in pos and (0, 3) not in pos and all(a != p for a, p in pos)


def test_near_duplicates_are_ignored_when_asked():
    x = on_circle([0, 0, 30, 90])  # index 1 duplicates index 0
    y = torch.tensor([0, 0, 0, 1])
    pos, _ = as_pairs(EasyPositiveMiner("all")(x, y))
    assert (0, 1) in pos
    pos, _ = as_pairs(EasyPositiveMiner("all", duplicate_threshold=0.9999)(x, y))
    assert (0, 2) in pos and (0, 1) not in pos


def test_k_nearest_positives():
    x = on_circle([0, 5, 20, 60, 180])
    y = torch.tensor([0, 0, 0, 0, 1])
    pos, _ = as_pairs(EasyPositiveMiner("all", k=2)(x, y))
    assert [p for a, p in pos if a == 0] == [1, 2] and [p for a, p in pos if a == 3] == [1, 2]


@pytest.mark.parametrize("negatives", ["semihard", "hard", "all", "multi_similarity"])
@pytest.mark.parametrize("fallback", ["drop", "hardest"])
@given(seed=st.integers(0, 10_000))
def test_every_strategy_equals_the_brute_force_reference(negatives, fallback, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 6, generator=g)
    y = torch.randint(0, 5, (24,), generator=g)
    y[0] = 99  # a singleton class
    got = as_pairs(EasyPositiveMiner(negatives, fallback=fallback)(x, y))
    assert got == brute_force(x, y, negatives, fallback)


def test_distance_weighted_negatives_are_valid_and_seeded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = torch.randint(0, 8, (64,), generator=g)
    miner = EasyPositiveMiner("distance_weighted", negatives_per_anchor=3, nonzero_loss_cutoff=1.4)
    torch.manual_seed(1)
    a1, p, a2, n = miner(x, y)
    assert (y[a2] != y[n]).all() and len(a2) == 3 * len(set(a2.tolist()))
    d = torch.cdist(F.normalize(x, dim=1), F.normalize(x, dim=1))
    assert (d[a2, n] < 1.4).all()
    torch.manual_seed(1)
    assert all(torch.equal(u, v) for u, v in zip(miner(x, y), (a1, p, a2, n), strict=True))


@pytest.mark.parametrize("neg", ["semihard", "hard", "all"])
def test_parity_with_pml_batch_easy_hard_miner(neg):
    from pytorch_metric_learning.miners import BatchEasyHardMiner

    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(128, 32, generator=g)
        y = torch.randint(0, 16, (128,), generator=g)
        ours = as_pairs(EasyPositiveMiner(neg)(x, y))
        theirs = as_pairs(BatchEasyHardMiner(pos_strategy="easy", neg_strategy=neg)(x, y))
        assert ours == theirs


def test_gradient_flows_only_through_the_chosen_pairs():
    from pytorch_metric_learning.losses import TripletMarginLoss

    x = on_circle([0, 8, 170, 60, 65, 240]).requires_grad_(True)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    tuples = EasyPositiveMiner("hard")(x, y)
    TripletMarginLoss(margin=2.0)(x, y, tuples).backward()
    used = set(torch.cat(tuples).tolist())
    for i in range(len(y)):
        assert (x.grad[i].abs().sum() > 0) == (i in used), i
    assert 5 not in used or 5 in tuples[3].tolist()


def test_edge_cases_no_pairs_one_class_singletons():
    from pytorch_metric_learning.losses import TripletMarginLoss

    x = torch.randn(6, 4, requires_grad=True)
    for y in (torch.zeros(6, dtype=torch.long), torch.arange(6)):  # one class: no negatives; singletons: no positives
        out = EasyPositiveMiner("semihard")(x, y)
        assert all(t.numel() == 0 for t in out)
        loss = TripletMarginLoss()(x, y, out)
        loss.backward()
        assert loss.item() == 0


def test_reference_set_indices_point_into_the_reference():
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(8, 5, generator=g), torch.randn(20, 5, generator=g)
    y, ref_y = torch.randint(0, 3, (8,), generator=g), torch.randint(0, 3, (20,), generator=g)
    a1, p, a2, n = EasyPositiveMiner("hard")(x, y, ref, ref_y)
    assert (y[a1] == ref_y[p]).all() and (y[a2] != ref_y[n]).all() and p.max() < 20
    d = torch.cdist(F.normalize(x, dim=1), F.normalize(ref, dim=1))
    for a, q in zip(a1.tolist(), p.tolist(), strict=True):
        assert d[a, q] == d[a][ref_y == y[a]].min()


def test_bad_arguments():
    with pytest.raises(ValueError, match="negatives must be one of"):
        EasyPositiveMiner("random")
    with pytest.raises(ValueError, match="fallback"):
        EasyPositiveMiner(fallback="farthest")
    with pytest.raises(ValueError, match="≥ 1"):
        EasyPositiveMiner(k=0)

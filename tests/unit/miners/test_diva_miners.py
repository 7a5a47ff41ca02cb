"""DiVA's task miners: the constraints of each, and the distance weighting."""

import math

import pytest
import torch
import torch.nn.functional as F

from deepmetric.miners import DistanceWeightedTripletMiner, IntraClassTripletMiner, SharedTripletMiner
from deepmetric.registry import build_miner


def batch(seed=0, classes=8, per_class=4, dim=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes * per_class, dim, generator=g), torch.arange(classes).repeat_interleave(per_class)


def test_distance_weighted_constraints():
    x, y = batch()
    y[-1] = 99  # a singleton: never an anchor
    a, p, n = DistanceWeightedTripletMiner()(x, y, generator=torch.Generator().manual_seed(1))
    assert len(a) == len(y) - 1 and 31 not in a.tolist()
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()


def test_distance_weighting_prefers_near_negatives():
    # anchor and positive at 0°; a near negative at 40° (chord 0.68) and a far one at 100° (chord 1.53), in 64-d
    def point(deg):
        v = torch.zeros(64)
        v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return v

    x = torch.stack([point(0), point(1), point(40), point(100)])
    y = torch.tensor([0, 0, 1, 2])
    g = torch.Generator().manual_seed(0)
    picks = [DistanceWeightedTripletMiner()(x, y, generator=g)[2][0].item() for _ in range(200)]
    assert picks.count(2) > 190  # weight ratio (d^-62 …) makes the far negative vanishingly rare


@pytest.mark.parametrize("sharing", ["standard", "full"])
def test_shared_standard_and_full_use_three_classes(sharing):
    x, y = batch(seed=2)
    a, p, n = SharedTripletMiner(sharing)(x, y, generator=torch.Generator().manual_seed(3))
    assert len(a) == len(y)
    assert (y[a] != y[n]).all() and (y[a] != y[p]).all() and (y[p] != y[n]).all()


def test_shared_random_permutes_the_labels():
    x, y = batch(seed=4, classes=16, per_class=2)
    a, p, n = SharedTripletMiner("random")(x, y, generator=torch.Generator().manual_seed(5))
    assert len(a) == len(y)
    assert (y[a] != y[p]).float().mean() > 0.7  # positives are mostly other real classes
    again = SharedTripletMiner("random")(x, y, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip((a, p, n), again, strict=True))


def test_intra_class_triplets_stay_in_one_class():
    x, y = batch(seed=6)
    a, p, n = IntraClassTripletMiner()(x, y, generator=torch.Generator().manual_seed(7))
    assert len(a) == len(y) and (y[a] == y[p]).all() and (y[a] == y[n]).all()
    assert (a == p).any()  # drawn with replacement, as in the reference code


def test_no_valid_anchor_gives_empty_triplets_and_names_are_registered():
    x = F.normalize(torch.randn(4, 8), dim=1)
    out = DistanceWeightedTripletMiner()(x, torch.arange(4))
    assert all(t.numel() == 0 for t in out)
    assert isinstance(build_miner("diva_shared", {"sharing": "full"}), SharedTripletMiner)
    assert isinstance(build_miner("diva_intra"), IntraClassTripletMiner)
    with pytest.raises(ValueError, match="sharing"):
        SharedTripletMiner("everything")

"""The report's failure analysis on a hand-made embedding: worst queries, confused pairs, worst classes."""

import numpy as np
import torch

from deepmetric.report import failures


def test_failures_by_hand():
    # class 0 at angle 0°, class 1 at 90°, class 2 at 180°; item 5 (class 2) sits next to class 1
    angles = np.radians([0, 2, 90, 92, 180, 89, 178])
    x = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    nearest = failures.neighbours(x, 2)
    assert nearest[5, 0] in (2, 3) and nearest[0, 0] == 1  # item 5's nearest is of class 1
    worst = failures.worst_queries(x, labels, 2)
    # map@r: item 2 (R = 1) has item 5 (class 2) first; item 5 (R = 2) has items 2 and 3 (class 1) first: both 0,
    # the tie broken by position
    assert worst == [(2, 0.0), (5, 0.0)]
    pairs = failures.confused_pairs(labels, nearest, 5)
    assert pairs == [(1, 2, 2, 5)]  # 5 → 2 (class 1) and 2 → 5 (class 2): one pair, both directions, 2 + 3 images
    assert failures.worst_classes({0: 1.0, 1: 0.5, 2: 0.5}, 2) == [(1, 0.5), (2, 0.5)]  # ties by class


def test_lone_queries_are_not_scored():
    x = torch.eye(3)
    assert failures.worst_queries(x, np.array([0, 1, 2]), 3) == []


def test_pair_distances_sample_positive_and_negative_pairs():
    from deepmetric.report.failures import pair_distances

    # classes 0 (two points at distance 1) and 1 (one point): positives are all 1, negatives are 3 or 4 away
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]])
    positives, negatives = pair_distances(x, np.array([0, 0, 1]), 50, seed=0, normalize=False)
    assert len(positives) == 50 and np.allclose(positives, 1.0)
    assert 0 < len(negatives) <= 50 and set(np.round(negatives, 6)) <= {3.0, 4.0}
    again = pair_distances(x, np.array([0, 0, 1]), 50, seed=0, normalize=False)
    assert np.array_equal(again[1], negatives)  # deterministic
    none, _ = pair_distances(x, np.array([0, 1, 2]), 10, seed=0, normalize=False)
    assert len(none) == 0  # singletons: no positive pair

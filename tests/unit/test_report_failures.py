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

"""Collapse diagnostics against hand computations."""

import math

import pytest
import torch

from deepmetric.evaluation.diagnostics import collapse_diagnostics, intra_class_variance, spread_ratio


def test_spread_ratio_by_hand():
    # fine groups (each two identical points) at the corners of a square of side 1; coarse A = {0, 1}, B = {2, 3}
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = corners.repeat_interleave(2, dim=0)
    fine = torch.arange(4).repeat_interleave(2)
    coarse = torch.tensor([0, 0, 1, 1]).repeat_interleave(2)
    # within coarse: distance 1 (pairs 0–1, 2–3); across: 1, √2, √2, 1 → mean (2 + 2√2) / 4
    expected = 1.0 / ((2 + 2 * math.sqrt(2)) / 4)
    assert spread_ratio(x, fine, coarse, normalize=False) == pytest.approx(expected)


def test_total_collapse_is_zero_and_undefined_cases_are_nan():
    x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    fine = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    coarse = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert spread_ratio(x, fine, coarse) == 0.0
    assert math.isnan(spread_ratio(x, fine, fine))  # one fine group per coarse class
    with pytest.raises(ValueError, match="several coarse classes"):
        spread_ratio(x, torch.zeros(8, dtype=torch.long), coarse)


def test_intra_class_variance_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [3.0, 3.0]])
    v = intra_class_variance(x, [0, 0, 1, 1], normalize=False)
    assert v[0] == pytest.approx(0.5) and v[1] == 0.0  # centroid (½, ½): squared distances ½ and ½
    d = collapse_diagnostics(x, [0, 0, 1, 1], coarse_labels=None)
    assert set(d) == {"intra_class_variance"}

"""Match-threshold calibration: targets, nearest-neighbour decisions, thresholds and the isotonic confidence, each
against a hand computation or a brute-force / scikit-learn reference."""

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from deepmetric.errors import ConfigError
from deepmetric.evaluation import verification_metrics
from deepmetric.evaluation.calibration import (
    NearestDecisions,
    Target,
    calibrate,
    choose_threshold,
    confidence_curve,
    isotonic_decreasing,
    nearest_decisions,
    read_confidence,
)
from deepmetric.evaluation.verification import pair_rates_at


def _clusters(n=240, classes=12, dim=16, spread=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


@pytest.mark.parametrize(
    "text, kind, value",
    [("precision=0.95", "precision", 0.95), ("fmr=1e-3", "fmr", 1e-3), ("F1", "f1", None), (" fmr = 1 ", "fmr", 1.0)],
)
def test_target_parses(text, kind, value):
    t = Target.parse(text)
    assert (t.kind, t.value) == (kind, value)


@pytest.mark.parametrize("text", ["precision", "precision=0", "precision=1.5", "fmr=abc", "f1=0.3", "recall=0.9", ""])
def test_bad_targets_are_named(text):
    with pytest.raises(ConfigError, match="calibration target"):
        Target.parse(text)


def test_nearest_decisions_equal_brute_force():
    x, y = _clusters()
    found = nearest_decisions(x, y)
    xn = torch.nn.functional.normalize(x.double(), dim=1).numpy()
    d = np.sqrt(np.clip(2 - 2 * xn @ xn.T, 0, None))
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    distance = d[np.arange(len(d)), nearest]
    order = np.argsort(distance, kind="stable")
    np.testing.assert_allclose(found.distance, distance[order], atol=1e-5)
    assert (found.correct == (y.numpy()[nearest] == y.numpy())[order]).all()
    counts = np.bincount(y.numpy())
    assert found.answerable == int((counts[y.numpy()] > 1).sum())


HAND = NearestDecisions(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([True, True, False, True, False]), answerable=5)


@pytest.mark.parametrize(
    "target, threshold",
    # cumulative precision 1, 1, 2/3, 3/4, 3/5; F1 = 2·right / (accepted + 5): 1/3, 4/7, 1/2, 2/3, 3/5
    [("precision=1", 0.25), ("precision=0.9", 0.25), ("precision=0.75", 0.45), ("precision=0.6", 0.5 + 1e-6),
     ("f1", 0.45)],
)  # fmt: skip
def test_thresholds_by_hand(target, threshold):
    assert choose_threshold(HAND, Target.parse(target)) == pytest.approx(threshold)


def test_ties_move_together_and_an_unreachable_precision_names_the_best():
    tied = NearestDecisions(np.array([0.1, 0.2, 0.2, 0.3]), np.array([True, True, False, True]), answerable=4)
    # the two decisions at 0.2 are accepted together: precision 2/3 there, so 0.8 stops before them
    assert choose_threshold(tied, Target.parse("precision=0.8")) == pytest.approx(0.15)
    wrong_first = NearestDecisions(np.array([0.1, 0.2]), np.array([False, True]), answerable=2)
    with pytest.raises(ConfigError, match=r"best is 0\.5000"):
        choose_threshold(wrong_first, Target.parse("precision=0.9"))


def test_isotonic_fit_by_hand_and_against_scikit_learn():
    xs, ys, sizes = isotonic_decreasing(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 0]))
    np.testing.assert_allclose(xs, [1.0, 2.5, 4.0])
    np.testing.assert_allclose(ys, [1.0, 0.5, 0.0])
    assert sizes.tolist() == [1, 2, 1]
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 2, 500).round(2))  # with ties
    y = (rng.uniform(size=500) < 1 - x / 2).astype(float)
    xs, ys, sizes = isotonic_decreasing(x, y)
    reference = IsotonicRegression(increasing=False).fit_transform(x, y)
    np.testing.assert_allclose(np.repeat(ys, sizes), reference, atol=1e-12)
    assert np.all(np.diff(ys) < 0) and np.all(np.diff(xs) > 0)
    curve = {"distance": xs.tolist(), "confidence": ys.tolist()}
    assert read_confidence(curve, [0.0, 2.5]).tolist() == [ys[0], ys[-1]]  # flat beyond the ends
    middle = (xs[0] + xs[1]) / 2
    assert float(read_confidence(curve, middle)) == pytest.approx((ys[0] + ys[1]) / 2)


def test_fmr_target_uses_the_verification_threshold_and_pair_rates_match_brute_force():
    x, y = _clusters(seed=1)
    found = calibrate(x, y, "fmr=0.01")
    expected = verification_metrics(x, y, fmrs=(0.01,))["threshold@fmr=0.01"]
    assert found["threshold"] == pytest.approx(expected)
    xn = torch.nn.functional.normalize(x.double(), dim=1).numpy()
    d = np.sqrt(np.clip(2 - 2 * xn @ xn.T, 0, None))
    iu = np.triu_indices(len(d), 1)
    same = (y.numpy()[:, None] == y.numpy()[None, :])[iu]
    dist = d[iu]
    t = found["threshold"]
    rates = pair_rates_at(x, y, t, memory_budget=1 << 16)  # several chunks
    assert rates["fmr"] == pytest.approx(np.mean(dist[~same] <= t), abs=1e-12)
    assert rates["fnmr"] == pytest.approx(np.mean(dist[same] > t), abs=1e-12)
    assert found["achieved"]["fmr"] == pytest.approx(rates["fmr"])


def test_calibration_achieves_its_precision_and_the_confidence_falls_with_distance():
    x, y = _clusters(spread=1.2, seed=2)
    found = calibrate(x, y, "precision=0.9")
    assert found["achieved"]["precision"] >= 0.9
    assert 0 < found["achieved"]["accepted"] < 1
    decisions = nearest_decisions(x, y)
    beyond = decisions.distance > found["threshold"]
    assert decisions.at(found["threshold"])["precision"] == found["achieved"]["precision"]
    assert beyond.any()  # the precision target left some queries unanswered
    curve = found["confidence_curve"]
    assert np.all(np.diff(curve["confidence"]) <= 0) and np.all(np.diff(curve["distance"]) > 0)
    assert curve == confidence_curve(decisions)
    best_f1 = calibrate(x, y, "f1")
    assert best_f1["achieved"]["f1"] >= found["achieved"]["f1"] - 1e-12


def test_a_set_without_repeated_labels_cannot_be_calibrated():
    with pytest.raises(ConfigError, match="every label occurs once"):
        calibrate(torch.randn(5, 4), torch.arange(5), "f1")

"""Verification metrics (ROC, FNMR@FMR, EER, best F1) against hand computations and an N × N brute force."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from deepmetric.evaluation import verification as ver
from deepmetric.evaluation import verification_metrics

from .helpers import clustered

FMRS = (1e-1, 1e-2, 1e-3, 1e-4)


def brute_force(x, y, fmrs=FMRS, normalize=True):
    """Every metric from the full N × N distance matrix, threshold by threshold."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if normalize:
        x = F.normalize(x, dim=1)
    d = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1).sqrt().numpy()
    y = np.asarray(y)
    i, j = np.triu_indices(len(y), k=1)
    same = y[i] == y[j]
    pos, neg = d[i, j][same], d[i, j][~same]
    out = {}
    for q in fmrs:
        t = np.quantile(neg, q)
        out[f"threshold@fmr={q:g}"] = t
        out[f"fnmr@fmr={q:g}"] = float((pos > t).mean())
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([pos, neg]))])
    fmr = (neg[None, :] <= thresholds[:, None]).mean(1)
    fnmr = (pos[None, :] > thresholds[:, None]).mean(1)
    out["eer"] = float(np.maximum(fmr, fnmr).min())
    tp = (pos[None, :] <= thresholds[:, None]).sum(1)
    fp = (neg[None, :] <= thresholds[:, None]).sum(1)
    f1 = 2 * tp / (2 * tp + fp + (len(pos) - tp))
    out["best_f1"] = float(f1.max())
    out["roc_auc"] = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], -np.r_[pos, neg])
    out["num_positive_pairs"], out["num_negative_pairs"] = len(pos), len(neg)
    return out


def assert_matches(result, expected):
    """Counts equal; rates to 1e-12 (one miscounted pair of these small sets moves a rate by more than 1e-5)."""
    for k, v in expected.items():
        if k.startswith("num_"):
            assert result[k] == v, k
        else:
            assert result[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (k, result[k], v)


def test_hand_computed_tiny_set():
    # points on a line: class 0 at 0 and 5, class 1 at 1 and 3
    # positives: 5, 2; negatives: 1, 3, 4, 2
    x, y = torch.tensor([[0.0], [5.0], [1.0], [3.0]]), torch.tensor([0, 0, 1, 1])
    r = verification_metrics(x, y, fmrs=(0.1, 1 / 3, 0.5, 1.0), normalize=False)
    assert (r["num_positive_pairs"], r["num_negative_pairs"], r["sampled"]) == (2, 4, False)
    # thresholds: np.quantile([1, 2, 3, 4], q) = 1.3, 2, 2.5, 4; FNMR = share of positives (2, 5) above them
    assert r["threshold@fmr=0.1"] == pytest.approx(1.3)
    assert r["fnmr@fmr=0.1"] == 1.0
    assert r["threshold@fmr=0.333333"] == pytest.approx(2.0)
    assert r["fnmr@fmr=0.333333"] == 0.5  # the positive at exactly 2 matches (OML would count it a non-match)
    assert (r["threshold@fmr=0.5"], r["fnmr@fmr=0.5"]) == (pytest.approx(2.5), 0.5)
    assert (r["threshold@fmr=1"], r["fnmr@fmr=1"]) == (pytest.approx(4.0), 0.5)
    # T = 2: FMR = 2/4, FNMR = 1/2; T = 5: FMR 1, FNMR 0; below 2: FNMR 1
    assert (r["eer"], r["eer_threshold"]) == (0.5, 2.0)
    # F1 at T = 2: 2·1 / (2 + 2 + 1) = 0.4; at T = 5: 2·2 / (4 + 4 + 0) = 0.5
    assert (r["best_f1"], r["best_f1_threshold"], r["best_f1_recall"]) == (0.5, 5.0, 1.0)
    assert r["best_f1_precision"] == pytest.approx(1 / 3)
    # P(negative farther than positive): for 2: 3, 4 farther, 2 tied → 2.5; for 5: none → 2.5 / 8
    assert r["roc_auc"] == pytest.approx(2.5 / 8)
    assert r["roc"]["fpr"] == [0.0, 0.5, 1.0] and r["roc"]["tpr"] == [0.0, 0.5, 1.0]


def test_open_metric_learning_documented_example():
    # calc_fnmr_at_fmr's docstring example: fnmr@fmr=(0.1, 0.5) = (0.4, 0.2)
    pos = torch.tensor([0, 0, 1, 1, 2, 2, 5, 5, 9, 9], dtype=torch.float64)
    neg = torch.tensor([3, 3, 4, 4, 6, 6, 7, 7, 8, 8], dtype=torch.float64)
    r = ver._metrics(lambda: iter([(pos, neg)]), 10.0, (0.1, 0.5), 16, 1 << 20)
    assert (r["fnmr@fmr=0.1"], r["fnmr@fmr=0.5"]) == (0.4, 0.2)


@pytest.mark.parametrize("budget", [1 << 30, 20_000, 3_000, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_equals_brute_force(seed, budget):
    x, y = clustered(12, [1, 2, 3, 5, 8, 13, 21, 10, 7, 4, 1, 15], 6, spread=1.5, seed=seed)
    x = x.double()  # float64: block shapes change the last bits of float32 distances
    r = verification_metrics(x, y, memory_budget=budget)
    assert_matches(r, brute_force(x, y))


def test_unnormalized_and_float32_inputs():
    x, y = clustered(5, 30, 4, spread=2.0, seed=3)
    r = verification_metrics(x * 7, y, normalize=False)
    expected = brute_force(x * 7, y, normalize=False)
    assert r["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-4)
    assert r["eer"] == pytest.approx(expected["eer"], abs=2e-3)
    assert r["threshold@fmr=0.1"] == pytest.approx(expected["threshold@fmr=0.1"], rel=1e-5)


@pytest.mark.parametrize("min_collect,bins", [(4, 4), (1, 2), (16, 8)])
def test_crowded_bins_are_refined_exactly(monkeypatch, min_collect, bins):
    monkeypatch.setattr(ver, "_MIN_COLLECT", min_collect)
    monkeypatch.setattr(ver, "_BINS", bins)
    x, y = clustered(6, 25, 5, seed=4)
    x = x.double()
    r = verification_metrics(x, y, memory_budget=16)
    assert_matches(r, brute_force(x, y))


@pytest.mark.parametrize("refine", [False, True])
def test_ties_on_an_integer_grid(monkeypatch, refine):
    # integer coordinates: every squared distance is an exact integer, so ties are real ties in both computations
    if refine:
        monkeypatch.setattr(ver, "_MIN_COLLECT", 2)
        monkeypatch.setattr(ver, "_BINS", 4)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (80, 2), generator=g).double()
    y = torch.randint(0, 4, (80,), generator=g)
    r = verification_metrics(x, y, normalize=False, fmrs=(0.5, 0.1, 0.01, 1e-3), memory_budget=5_000)
    assert_matches(r, brute_force(x, y, fmrs=(0.5, 0.1, 0.01, 1e-3), normalize=False))


def test_all_identical_embeddings():
    x, y = torch.ones(20, 3), torch.arange(20) % 3
    r = verification_metrics(x, y)
    assert r["eer"] == 1.0 and r["roc_auc"] == 0.5 and r["fnmr@fmr=0.1"] == 0.0


@pytest.mark.parametrize(
    "labels,missing",
    [(torch.zeros(10, dtype=torch.int64), "negative"), (torch.arange(10), "positive")],
    ids=["one-class", "singletons"],
)
def test_no_positive_or_no_negative_pairs_give_nan(labels, missing):
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=f"no {missing}"):
        r = verification_metrics(x, labels)
    assert math.isnan(r["eer"]) and math.isnan(r["fnmr@fmr=0.01"]) and math.isnan(r["roc_auc"])
    assert r["roc"]["fpr"] == []


def test_a_single_item_has_no_pairs():
    with pytest.warns(UserWarning):
        r = verification_metrics(torch.randn(1, 4), torch.tensor([0]))
    assert r["num_positive_pairs"] == r["num_negative_pairs"] == 0


def test_singletons_beside_classes_only_add_negatives():
    x, y = clustered(4, [1, 6, 1, 5], 3, seed=6)
    x = x.double()
    assert_matches(verification_metrics(x, y), brute_force(x, y))


def test_roc_is_monotone_and_compact():
    x, y = clustered(30, 40, 8, spread=1.0, seed=7)
    r = verification_metrics(x, y, roc_points=100)
    fpr, tpr = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
    assert len(fpr) <= 103 and fpr[0] == tpr[0] == 0 and tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) > 0).all()


def test_sampled_estimate_is_close_to_exact():
    x, y = clustered(20, 30, 8, spread=1.2, seed=8)  # 179,700 pairs, 8,700 positive
    exact = verification_metrics(x, y)
    est = verification_metrics(x, y, max_pairs=60_000, seed=1)
    assert est["sampled"] and not exact["sampled"] and est["num_total_pairs"] == 179_700
    assert est["num_positive_pairs"] == exact["num_positive_pairs"]  # few enough positives: all are kept
    assert est["num_positive_pairs"] + est["num_negative_pairs"] == 60_000
    assert est["roc_auc"] == pytest.approx(exact["roc_auc"], abs=0.005)
    assert est["eer"] == pytest.approx(exact["eer"], abs=0.01)
    assert est["best_f1"] == pytest.approx(exact["best_f1"], abs=0.02)
    assert est["fnmr@fmr=0.1"] == pytest.approx(exact["fnmr@fmr=0.1"], abs=0.02)
    assert est["fnmr@fmr=0.01"] == pytest.approx(exact["fnmr@fmr=0.01"], abs=0.05)
    assert est["threshold@fmr=0.1"] == pytest.approx(exact["threshold@fmr=0.1"], rel=0.01)
    # positives sampled too (more than half of max_pairs)
    small = verification_metrics(x, y, max_pairs=10_000, seed=2)
    assert small["num_positive_pairs"] == 5_000 and small["num_negative_pairs"] == 5_000
    assert small["roc_auc"] == pytest.approx(exact["roc_auc"], abs=0.02)
    assert small["eer"] == pytest.approx(exact["eer"], abs=0.03)
    assert small["best_f1"] == pytest.approx(exact["best_f1"], abs=0.05)


def test_sampling_is_seeded_and_skipped_when_the_set_is_small():
    x, y = clustered(10, 20, 4, seed=9)
    a = verification_metrics(x, y, max_pairs=5_000, seed=3)
    b = verification_metrics(x, y, max_pairs=5_000, seed=3)
    c = verification_metrics(x, y, max_pairs=5_000, seed=4)
    assert a == b and a["eer"] != c["eer"]
    assert not verification_metrics(x, y, max_pairs=19_900)["sampled"]


@pytest.mark.parametrize(
    "kwargs,match",
    [({"fmrs": (0.0,)}, "fmrs"), ({"fmrs": (1.5,)}, "fmrs"), ({"max_pairs": 1}, "max_pairs")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        verification_metrics(torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 2]), **kwargs)

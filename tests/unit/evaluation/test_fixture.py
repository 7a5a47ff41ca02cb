"""The golden fixture of PML's own test (peers.md §1.4, Appendix A): ten expected values."""

import pytest
import torch

from deepmetric.evaluation import knn_label_metrics

QUERY_LABELS = torch.tensor([1, 1, 2, 3, 4, 0])
KNN_LABELS = torch.tensor(
    [[0, 1, 1, 2, 2], [1, 0, 1, 1, 3], [4, 4, 4, 4, 2], [3, 1, 3, 1, 3], [0, 0, 4, 2, 2], [1, 2, 3, 4, 5]]
)
REF_COUNTS = {0: 2, 1: 3, 2: 5, 3: 4, 4: 5}
ALL = ("precision@1", "r_precision", "map@r", "map@k", "mrr")


def _metrics(knn_labels, same_set):
    R = torch.tensor([REF_COUNTS[int(q)] - int(same_set) for q in QUERY_LABELS])
    values = knn_label_metrics(knn_labels, QUERY_LABELS, R, ks=(1,), metrics=ALL)
    return {name: float(v.mean()) for name, v in values.items()}


def test_separate_sets_match_pml_expectations():
    m = _metrics(KNN_LABELS, same_set=False)
    assert m["precision@1"] == pytest.approx(2 / 6, abs=1e-6)
    assert m["r_precision"] == pytest.approx(0.372222, abs=1e-6)
    assert m["map@r"] == pytest.approx(0.244630, abs=1e-6)
    assert m["map@k"] == pytest.approx(0.311296, abs=1e-6)
    assert m["mrr"] == pytest.approx(0.505556, abs=1e-6)
    assert m["recall@1"] == m["precision@1"]


def test_same_set_matches_pml_expectations():
    m = _metrics(KNN_LABELS[:, 1:], same_set=True)
    assert m["precision@1"] == pytest.approx(1 / 6, abs=1e-6)
    assert m["r_precision"] == pytest.approx(0.388889, abs=1e-6)
    assert m["map@r"] == pytest.approx(0.267361, abs=1e-6)
    assert m["map@k"] == pytest.approx(0.350694, abs=1e-6)
    assert m["mrr"] == pytest.approx(0.458333, abs=1e-6)


def test_recall_at_k_by_hand():
    # query 2 (label 2) retrieves [4,4,4,4,2]: first hit at rank 5
    m = knn_label_metrics(KNN_LABELS, QUERY_LABELS, torch.ones(6, dtype=torch.long), ks=(1, 4, 5), metrics=())
    assert m["recall@4"][2] == 0.0 and m["recall@5"][2] == 1.0
    # query 5 (label 0) never retrieves a 0
    assert m["recall@5"][5] == 0.0
    # K larger than the list is clipped to the list
    m = knn_label_metrics(KNN_LABELS, QUERY_LABELS, torch.ones(6, dtype=torch.long), ks=(50,), metrics=())
    assert m["recall@50"].tolist() == [1, 1, 1, 1, 1, 0]

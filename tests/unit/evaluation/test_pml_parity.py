"""Parity with pytorch-metric-learning's AccuracyCalculator on random tie-free embeddings (test-only dependency)."""

import pytest
import torch
import torch.nn.functional as F

from deepmetric.evaluation import retrieval_metrics

from .helpers import clustered

pml_acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
from pytorch_metric_learning.distances import LpDistance  # noqa: E402
from pytorch_metric_learning.utils.inference import CustomKNN  # noqa: E402

PML_NAMES = {"precision_at_1": "precision@1", "r_precision": "r_precision", "mean_average_precision_at_r": "map@r"}


def _pml(query, query_labels, reference=None, reference_labels=None, avg_of_avgs=False, extra=()):
    calc = pml_acc.AccuracyCalculator(
        include=(*PML_NAMES, *extra),
        k="max_bin_count",
        avg_of_avgs=avg_of_avgs,
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(query, query_labels, reference, reference_labels)


def _with_lone_queries(x, y):
    """Append three singleton classes so some queries have no other item of their class."""
    extra = torch.randn(3, x.shape[1])
    return torch.cat([x, extra]), torch.cat([y, torch.tensor([10_001, 10_002, 10_003])])


@pytest.mark.parametrize("n_classes,per_class,dim", [(5, 4, 8), (20, [2, 3, 7, 12] * 5, 16), (60, 9, 32)])
@pytest.mark.parametrize("average", ["micro", "macro"])
def test_one_set_mode_equals_pml(n_classes, per_class, dim, average):
    x, y = clustered(n_classes, per_class, dim, spread=1.5, seed=n_classes)
    x, y = _with_lone_queries(x, y)
    x = F.normalize(x, dim=1)
    # ks=(1,) makes k the largest class size minus one, as PML's k="max_bin_count" (map@k depends on k)
    ours = retrieval_metrics(x, y, ks=(1,), average=average, metrics=("precision@1", "r_precision", "map@r", "map@k"))
    theirs = _pml(x, y, avg_of_avgs=average == "macro", extra=("mean_average_precision",))
    for pml_name, our_name in {**PML_NAMES, "mean_average_precision": "map@k"}.items():
        assert ours[our_name] == pytest.approx(theirs[pml_name], abs=1e-6), pml_name
    assert ours["num_lone_queries"] == 3
    assert ours["num_queries"] == len(y) - 3


@pytest.mark.parametrize("n_query,n_ref,n_classes", [(30, 50, 6), (200, 400, 40), (257, 1000, 90)])
@pytest.mark.parametrize("average", ["micro", "macro"])
def test_query_gallery_mode_equals_pml(n_query, n_ref, n_classes, average):
    g = torch.Generator().manual_seed(n_query)
    centres = torch.randn(n_classes, 24, generator=g)
    qy = torch.randint(0, n_classes, (n_query,), generator=g)
    ry = torch.randint(0, n_classes - 2, (n_ref,), generator=g)  # the last two classes have no gallery item
    qx = F.normalize(centres[qy] + 1.2 * torch.randn(n_query, 24, generator=g), dim=1)
    rx = F.normalize(centres[ry] + 1.2 * torch.randn(n_ref, 24, generator=g), dim=1)
    ours = retrieval_metrics(qx, qy, rx, ry, average=average)
    theirs = _pml(qx, qy, rx, ry, avg_of_avgs=average == "macro")
    for pml_name, our_name in PML_NAMES.items():
        assert ours[our_name] == pytest.approx(theirs[pml_name], abs=1e-6), pml_name
    assert ours["num_lone_queries"] == int((qy >= n_classes - 2).sum())


def test_unnormalised_euclidean_equals_pml_on_raw_vectors():
    x, y = clustered(15, 6, 12, spread=2.0, seed=3)
    x = x * torch.rand(len(x), 1) * 3  # varying norms: Euclidean and cosine rankings differ
    ours = retrieval_metrics(x, y, normalize=False)
    theirs = _pml(x, y)
    for pml_name, our_name in PML_NAMES.items():
        assert ours[our_name] == pytest.approx(theirs[pml_name], abs=1e-6), pml_name
    cosine = retrieval_metrics(x, y)
    assert cosine["map@r"] != pytest.approx(ours["map@r"], abs=1e-6)

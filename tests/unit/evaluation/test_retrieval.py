"""Properties and edge cases of retrieval_metrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from deepmetric.evaluation import encode_labels, iter_knn, per_class_retrieval_metrics, retrieval_metrics
from deepmetric.evaluation.knn import faiss_available, plan_chunks

from .helpers import clustered

METRICS = ("precision@1", "r_precision", "map@r", "map@k", "mrr")


def brute_force(x, y, ks=(1, 2, 4, 8)):
    """Reference implementation: full argsort of the whole distance matrix, one query at a time."""
    x = F.normalize(x.double(), dim=1)
    out = {f"recall@{K}": [] for K in ks} | {"precision@1": [], "r_precision": [], "map@r": []}
    for i in range(len(y)):
        d = ((x - x[i]) ** 2).sum(1)
        d[i] = math.inf
        order = torch.argsort(d)[: len(y) - 1]
        rel = (y[order] == y[i]).double()
        R = int(rel.sum())
        if R == 0:
            continue
        for K in ks:
            out[f"recall@{K}"].append(float(rel[:K].sum() > 0))
        out["precision@1"].append(float(rel[0]))
        out["r_precision"].append(float(rel[:R].sum() / R))
        prec = rel.cumsum(0) / torch.arange(1, len(rel) + 1)
        out["map@r"].append(float((prec[:R] * rel[:R]).sum() / R))
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_equals_full_sort_brute_force():
    x, y = clustered(12, [1, 2, 5, 9] * 3, 10, spread=1.0, seed=1)
    ours = retrieval_metrics(x, y)
    ref = brute_force(x, y)
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name


@given(seed=st.integers(0, 10_000), n_classes=st.integers(2, 8), per_class=st.integers(2, 6))
def test_permutation_invariance(seed, n_classes, per_class):
    x, y = clustered(n_classes, per_class, 6, spread=1.0, seed=seed)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    a = retrieval_metrics(x, y, metrics=METRICS)
    b = retrieval_metrics(x[perm], y[perm], metrics=METRICS)
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-12), name


@pytest.mark.filterwarnings("ignore:every query is lone")
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 7), min_size=2, max_size=9))
def test_perfect_embeddings_score_one(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(sizes), 16, generator=g), dim=1) * 100
    y = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    x = centres[y] + 0.01 * torch.randn(len(y), 16, generator=g)
    m = retrieval_metrics(x, y, ks=(1, 3), metrics=METRICS)
    scored = [n for n in m if n.startswith(("recall", "prec", "r_", "map", "mrr"))]
    if sum(s > 1 for s in sizes) == 0:
        assert m["num_queries"] == 0
    else:
        for name in scored:
            assert m[name] == pytest.approx(1.0), name
    assert m["num_lone_queries"] == sum(s == 1 for s in sizes)


@given(seed=st.integers(0, 10_000), budget=st.integers(200, 40_000), same_set=st.booleans())
def test_chunk_size_never_changes_the_result(seed, budget, same_set):
    x, y = clustered(9, [3, 4, 5] * 3, 8, spread=1.3, seed=seed)
    kwargs = {} if same_set else {"reference": x[::2], "reference_labels": y[::2]}
    big = retrieval_metrics(x, y, metrics=METRICS, **kwargs)
    small = retrieval_metrics(x, y, metrics=METRICS, memory_budget=budget, **kwargs)
    assert big == small


def test_tiny_budget_forces_reference_blocks():
    rows, block = plan_chunks(n_query=1000, n_reference=100_000, k=10, memory_budget=1 << 20)
    assert block < 100_000 and rows >= 1
    x, y = clustered(30, 7, 8, seed=2)
    assert retrieval_metrics(x, y, memory_budget=64 * 4 * 50) == retrieval_metrics(x, y)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("normalize", [True, False])
def test_faiss_backend_identical(normalize):
    x, y = clustered(24, [2, 3, 8] * 8, 20, spread=1.5, seed=4)
    q, qy = x[:60], y[:60]
    for kwargs in ({}, {"reference": x[60:], "reference_labels": y[60:]}):
        a = retrieval_metrics(q, qy, metrics=METRICS, normalize=normalize, **kwargs)
        b = retrieval_metrics(q, qy, metrics=METRICS, normalize=normalize, backend="faiss", **kwargs)
        assert a == pytest.approx(b, abs=1e-12)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_and_torch_neighbours_and_scores_agree():
    x, _ = clustered(10, 10, 8, seed=5)
    own = torch.arange(100)
    for metric in ("inner_product", "euclidean"):
        t = next(iter_knn(x, x, 5, self_index=own, metric=metric))
        f = next(iter_knn(x, x, 5, self_index=own, metric=metric, backend="faiss"))
        assert torch.equal(t.indices, f.indices)
        assert torch.allclose(t.scores, f.scores, atol=1e-4)
        assert not (t.indices == own.unsqueeze(1)).any()


def test_exact_duplicates_do_not_break_self_exclusion():
    # each class is two identical copies of one vector: the copy must be found at rank 1, never the query
    base = F.normalize(torch.randn(10, 8), dim=1)
    x = base.repeat_interleave(2, dim=0)
    y = torch.arange(10).repeat_interleave(2)
    m = retrieval_metrics(x, y, metrics=METRICS)
    assert m["precision@1"] == 1.0 and m["map@r"] == 1.0
    chunk = next(iter_knn(x, x, 3, self_index=torch.arange(20)))
    assert not (chunk.indices == torch.arange(20).unsqueeze(1)).any()
    assert (chunk.indices[:, 0] == torch.arange(20) ^ 1).all()


def test_all_identical_embeddings_still_exclude_self():
    x = torch.ones(6, 4)
    chunk = next(iter_knn(x, x, 5, self_index=torch.arange(6)))
    assert not (chunk.indices == torch.arange(6).unsqueeze(1)).any()


def test_labels_of_any_magnitude_are_exact():
    x, y = clustered(6, 5, 8, seed=6)
    big = y + 2**53  # 2**53 + 1 and 2**53 collide in float64 and everything collides in float32
    assert retrieval_metrics(x, big) == retrieval_metrics(x, y)
    assert retrieval_metrics(x, big.numpy()) == retrieval_metrics(x, y)
    assert retrieval_metrics(x.numpy(), y.tolist()) == retrieval_metrics(x, y)


def test_encode_labels_maps_strings_consistently():
    (q, r), classes = encode_labels(["cat", "dog", "cat"], np.array(["dog", "eel"]))
    assert classes == ["cat", "dog", "eel"]
    assert q.tolist() == [0, 1, 0] and r.tolist() == [1, 2]
    assert q.dtype == torch.int64


def test_macro_average_weights_classes_equally():
    x, y = clustered(4, [2, 2, 2, 30], 4, spread=3.0, seed=7)
    micro = retrieval_metrics(x, y, average="micro")
    macro = retrieval_metrics(x, y, average="macro")
    per_class = per_class_retrieval_metrics(x, y)
    assert macro["map@r"] == pytest.approx(np.mean([c["map@r"] for c in per_class.values()]))
    weighted = sum(c["map@r"] * c["num_queries"] for c in per_class.values()) / len(y)
    assert micro["map@r"] == pytest.approx(weighted)
    assert sorted(per_class) == [0, 1, 2, 3]


def test_all_lone_queries_give_nan_with_warning():
    with pytest.warns(UserWarning, match="lone"):
        m = retrieval_metrics(torch.randn(5, 3), torch.arange(5))
    assert math.isnan(m["map@r"]) and m["num_lone_queries"] == 5 and m["num_queries"] == 0


def test_k_never_exceeds_largest_class_or_ks():
    # one class of 3 among many singletons: k = max(8, 2) = 8, not N
    x, y = clustered(1, 3, 4, seed=8)
    x = torch.cat([x, torch.randn(500, 4)])
    y = torch.cat([y, torch.arange(1, 501)])
    m = retrieval_metrics(x, y, ks=(1, 8))
    assert m["num_queries"] == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"query": torch.randn(4, 3), "query_labels": torch.arange(5)}, "has 5 entries"),
        ({"query": torch.tensor([[0.0, float("nan")], [1, 1]]), "query_labels": [0, 0]}, "NaN or Inf"),
        ({"query": torch.tensor([[0.0, float("inf")], [1, 1]]), "query_labels": [0, 0]}, "NaN or Inf"),
        ({"query": torch.empty(0, 4), "query_labels": []}, "empty"),
        ({"query": torch.randn(4), "query_labels": [0, 0, 1, 1]}, "must be 2-D"),
        ({"query": torch.randn(2, 2, 2), "query_labels": [0, 0]}, "must be 2-D"),
        ({"query": torch.randn(4, 0), "query_labels": [0, 0, 1, 1]}, "0 dimensions"),
        ({"query": torch.randn(4, 3), "query_labels": None}, "query_labels is None"),
        ({"query": None, "query_labels": [0, 0, 1, 1]}, "query is None"),
        ({"query": torch.randn(4, 3), "query_labels": [0.0, 0, 1, 1]}, "must hold integers"),
        ({"query": torch.randn(4, 3), "query_labels": torch.tensor([0.0, 0, 1, 1])}, "must hold integers"),
        ({"query": torch.randn(2, 3), "query_labels": ["a", "b"]}, "encode_labels"),
        ({"query": torch.randn(4, 3), "query_labels": [[0, 0], [1, 1]]}, "must be 1-D|has 2 entries"),
        (
            {"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "reference": torch.randn(4, 3)},
            "without reference_labels",
        ),
        (
            {"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "reference_labels": [0, 1]},
            "without reference embeddings",
        ),
        (
            {
                "query": torch.randn(4, 3),
                "query_labels": [0, 0, 1, 1],
                "reference": torch.randn(4, 5),
                "reference_labels": [0, 0, 1, 1],
            },
            "3 dimensions but reference has 5",
        ),
        (
            {
                "query": torch.randn(4, 3),
                "query_labels": [0, 0, 1, 1],
                "reference": torch.randn(4, 3),
                "reference_labels": [0, 1],
            },
            "reference_labels has 2 entries",
        ),
        ({"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "ks": ()}, "ks must be"),
        ({"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "ks": (0,)}, "ks must be"),
        ({"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "average": "weighted"}, "average must"),
        ({"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "backend": "annoy"}, "backend must"),
        ({"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "metrics": ("f1",)}, "unknown metric"),
        ({"query": torch.randn(4, 3), "query_labels": [0, 0, 1, 1], "memory_budget": 0}, "memory_budget"),
    ],
)
def test_bad_input_raises_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**kwargs)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 6000), k=st.integers(1, 8))
def test_grouped_row_topk_is_exact(seed, n, k):
    from deepmetric.evaluation.knn import row_topk

    k = min(k, n)
    scores = torch.randn(7, n, generator=torch.Generator().manual_seed(seed))
    scores[0, -1] = 100.0  # the largest entry in the ragged last group
    scores[1, :] = float("-inf")
    scores[1, 5 % n] = 1.0
    vals, idx = row_topk(scores, k)
    ref_vals, ref_idx = scores.topk(k, dim=1)
    assert torch.equal(vals, ref_vals)
    assert torch.equal(idx[2:], ref_idx[2:]) and torch.equal(idx[0], ref_idx[0])
    assert torch.equal(scores.gather(1, idx), vals)

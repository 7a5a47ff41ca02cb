"""Retrieval metrics for deep metric learning, exact and in bounded memory.

Definitions (Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020, §3.2; identical to
pytorch-metric-learning's ``AccuracyCalculator``): for a query with label y, retrieved labels l_1..l_k (itself
excluded), rel_i = [l_i = y], R = number of other reference items labelled y and P(i) = (Σ_{j≤i} rel_j) / i,

- ``recall@K``    = [Σ_{i≤K} rel_i > 0]            (the DML "recall": a same-class item among the K nearest)
- ``precision@1`` = rel_1
- ``r_precision`` = Σ_{i≤R} rel_i / R
- ``map@r``       = Σ_{i≤R} P(i) rel_i / R
- ``map@k``       = Σ_{i≤k} P(i) rel_i / R           (PML's ``mean_average_precision`` at the same k)
- ``mrr``         = 1 / rank of the first relevant item (0 when none among the k)

Queries with R = 0 ("lone" queries) are excluded from every metric and counted in ``num_lone_queries``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .inputs import as_embeddings, as_labels
from .knn import DEFAULT_MEMORY_BUDGET, iter_knn

DEFAULT_KS = (1, 2, 4, 8)
RANK_METRICS = ("precision@1", "r_precision", "map@r", "map@k", "mrr")
DEFAULT_METRICS = ("precision@1", "r_precision", "map@r")
# float64 bytes allocated per (query, neighbour) while scoring: labels, relevance, cumulative hits, products
_SCORING_BYTES_PER_NEIGHBOUR = 40


def knn_label_metrics(
    knn_labels: torch.Tensor,
    query_labels: torch.Tensor,
    num_relevant: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = RANK_METRICS,
) -> dict[str, torch.Tensor]:
    """Per-query metric values from retrieved labels.

    Args:
        knn_labels: Q × k labels of the retrieved items, nearest first, self already removed.
        query_labels: Q labels. num_relevant: Q counts R ≥ 1 of relevant reference items.
    Returns:
        ``{"recall@K": Q float64, ...}`` for every K in ``ks`` and every name in ``metrics``.
    """
    k = knn_labels.shape[1]
    rel = knn_labels == query_labels.unsqueeze(1)
    hits = rel.cumsum(dim=1, dtype=torch.float64)  # hits within the top i
    out: dict[str, torch.Tensor] = {}
    for K in ks:
        out[f"recall@{K}"] = (hits[:, min(K, k) - 1] > 0).double()
    R = num_relevant.to(torch.float64)
    r_cut = num_relevant.clamp(max=k)
    if "precision@1" in metrics:
        out["precision@1"] = rel[:, 0].double()
    if "r_precision" in metrics:
        out["r_precision"] = hits.gather(1, (r_cut - 1).unsqueeze(1)).squeeze(1) / r_cut.double()
    if "map@r" in metrics or "map@k" in metrics:
        ranks = torch.arange(1, k + 1, dtype=torch.float64, device=hits.device)
        precision_at_hit = torch.where(rel, hits / ranks, 0.0)
        if "map@k" in metrics:
            out["map@k"] = precision_at_hit.sum(dim=1) / R
        if "map@r" in metrics:
            within_r = ranks.unsqueeze(0) <= num_relevant.unsqueeze(1)
            out["map@r"] = (precision_at_hit * within_r).sum(dim=1) / R
    if "mrr" in metrics:
        first = rel.double().argmax(dim=1)
        out["mrr"] = torch.where(rel.any(dim=1), 1.0 / (first + 1).double(), 0.0)
    return out


def _relevant_counts(query_labels: torch.Tensor, reference_labels: torch.Tensor, same_set: bool) -> torch.Tensor:
    """R for each query: reference items sharing its label, minus itself in one-set mode."""
    classes, counts = torch.unique(reference_labels, return_counts=True)
    pos = torch.searchsorted(classes, query_labels).clamp(max=classes.numel() - 1)
    R = torch.where(classes[pos] == query_labels, counts[pos], 0)
    return R - 1 if same_set else R


def per_query_retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    normalize: bool = True,
    backend: str = "torch",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Metric values of every scored (non-lone) query.

    Returns ``(labels, values, num_lone)``: the labels of the scored queries, ``{metric: float64 tensor}``
    aligned with them, and the number of excluded lone queries. Arguments as in `retrieval_metrics`.
    """
    ks = _check_ks(ks)
    unknown = sorted(set(metrics) - set(RANK_METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(RANK_METRICS)} and recall@K via ks")
    q = as_embeddings(query, "query", device)
    q_labels = as_labels(query_labels, "query_labels", q.shape[0])
    same_set = reference is None
    if same_set:
        if reference_labels is not None:
            raise ValueError("reference_labels were given without reference embeddings")
        r, r_labels = q, q_labels
    else:
        if reference_labels is None:
            raise ValueError("reference embeddings were given without reference_labels")
        r = as_embeddings(reference, "reference", q.device)
        r_labels = as_labels(reference_labels, "reference_labels", r.shape[0])
        if r.shape[1] != q.shape[1]:
            raise ValueError(f"query has {q.shape[1]} dimensions but reference has {r.shape[1]}")
    if normalize:
        q = F.normalize(q, dim=1)
        r = q if same_set else F.normalize(r, dim=1)

    R = _relevant_counts(q_labels, r_labels, same_set)
    scored = (R > 0).nonzero().flatten()
    num_lone = q.shape[0] - scored.numel()
    values = {name: torch.empty(scored.numel(), dtype=torch.float64) for name in _names(ks, metrics)}
    if scored.numel() == 0:
        return q_labels[scored], values, num_lone

    available = r.shape[0] - int(same_set)
    k = min(max(max(ks), int(R.max())), available)
    r_labels_dev = r_labels.to(r.device)
    queries = q if num_lone == 0 else q[scored.to(q.device)]  # no copy when every query is scored
    for chunk in iter_knn(
        queries,
        r,
        k,
        self_index=scored if same_set else None,
        metric="inner_product" if normalize else "euclidean",
        backend=backend,
        memory_budget=memory_budget,
        extra_bytes_per_neighbour=_SCORING_BYTES_PER_NEIGHBOUR,
        progress=progress,
    ):
        rows = scored[chunk.start : chunk.stop]
        knn_labels = r_labels_dev[chunk.indices.to(r.device)]
        chunk_values = knn_label_metrics(knn_labels, q_labels[rows].to(r.device), R[rows].to(r.device), ks, metrics)
        for name, v in chunk_values.items():
            values[name][chunk.start : chunk.stop] = v.cpu()
    return q_labels[scored], values, num_lone


def retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    average: str = "micro",
    normalize: bool = True,
    backend: str = "torch",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> dict[str, float]:
    """Exact retrieval metrics of ``query`` against ``reference`` (or against the rest of ``query``).

    Args:
        query: Q × D embeddings (torch tensor or numpy array). query_labels: Q integer labels (any magnitude).
        reference, reference_labels: N × D gallery and its labels (In-Shop style). When ``reference`` is None,
            every query is ranked against all other queries, itself excluded by index.
        ks: the K of ``recall@K``. metrics: any of ``precision@1``, ``r_precision``, ``map@r``, ``map@k``,
            ``mrr``.
        average: ``micro`` (mean over queries) or ``macro`` (mean over classes of per-class means).
        normalize: L2-normalise before Euclidean ranking (cosine ranking); False ranks raw Euclidean distances.
        backend: ``torch`` (CPU or GPU, the device of the embeddings or ``device``) or ``faiss`` (CPU).
        memory_budget: bytes of working memory; the search is chunked to stay inside it however large N is.
    Returns:
        ``{"recall@1": …, "precision@1": …, "r_precision": …, "map@r": …, "num_queries": scored queries,
        "num_lone_queries": queries with no other item of their class (excluded)}``. The neighbour count
        is k = max(max(ks), largest R), never N. Values are NaN when every query is lone.
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
    labels, values, num_lone = per_query_retrieval_metrics(
        query,
        query_labels,
        reference,
        reference_labels,
        ks=ks,
        metrics=metrics,
        normalize=normalize,
        backend=backend,
        memory_budget=memory_budget,
        device=device,
        progress=progress,
    )
    result: dict[str, float] = {}
    if labels.numel() == 0:
        warnings.warn("every query is lone (no other item of its class): retrieval metrics are NaN", stacklevel=2)
    for name, v in values.items():
        result[name] = _average(v, labels, average)
    result["num_queries"] = int(labels.numel())
    result["num_lone_queries"] = num_lone
    return result


def per_class_retrieval_metrics(query, query_labels, reference=None, reference_labels=None, **kwargs):
    """``{label: {metric: mean over that class's queries, "num_queries": n}}`` for every scored class.

    Keyword arguments as in `retrieval_metrics` (except ``average``).
    """
    labels, values, _ = per_query_retrieval_metrics(query, query_labels, reference, reference_labels, **kwargs)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    out: dict[int, dict[str, float]] = {int(c): {"num_queries": int(n)} for c, n in zip(classes, counts, strict=True)}
    for name, v in values.items():
        sums = torch.zeros(classes.numel(), dtype=torch.float64).index_add_(0, inverse, v)
        for c, s, n in zip(classes.tolist(), sums.tolist(), counts.tolist(), strict=True):
            out[c][name] = s / n
    return out


def _average(v: torch.Tensor, labels: torch.Tensor, average: str) -> float:
    if v.numel() == 0:
        return float("nan")
    if average == "micro":
        return float(v.mean())
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, inverse, v)
    return float((sums / counts).mean())


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or not all(isinstance(K, int) and not isinstance(K, bool) and K >= 1 for K in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    return ks


def _names(ks, metrics) -> list[str]:
    return [f"recall@{K}" for K in ks] + [m for m in RANK_METRICS if m in metrics]

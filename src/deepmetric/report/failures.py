"""Where a model fails, from its test embeddings: the worst queries, the most confused class pairs, the worst
classes. Exact and chunked (never an N × N matrix), deterministic (ties broken by position)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.knn import iter_knn
from ..evaluation.metrics import per_query_retrieval_metrics


def neighbours(x: torch.Tensor, k: int, memory_budget: int = 1 << 28) -> torch.Tensor:
    """N × k indices of each item's nearest other items (cosine on L2-normalised ``x``), nearest first."""
    x = F.normalize(x.float(), dim=1)
    out = torch.empty(x.shape[0], k, dtype=torch.long)
    for chunk in iter_knn(x, x, k, self_index=torch.arange(x.shape[0]), memory_budget=memory_budget):
        out[chunk.start : chunk.stop] = chunk.indices.cpu()
    return out


def worst_queries(x: torch.Tensor, labels: np.ndarray, count: int) -> list[tuple[int, float]]:
    """The ``count`` queries with the lowest average precision (map@r), as (position, AP), worst first; lone queries
    (no other item of their class) are not scored."""
    counts = np.bincount(np.searchsorted(np.unique(labels), labels))
    scored = np.flatnonzero(counts[np.searchsorted(np.unique(labels), labels)] > 1)
    if not len(scored):
        return []
    _, values, _ = per_query_retrieval_metrics(x, labels, ks=(1,), metrics=("map@r",))
    ap = values["map@r"].numpy()
    order = np.lexsort((scored, ap))[:count]  # lowest AP first, ties by position
    return [(int(scored[i]), float(ap[i])) for i in order]


def confused_pairs(labels: np.ndarray, nearest: torch.Tensor, count: int) -> list[tuple[int, int, int, int]]:
    """The class pairs most often confused at rank 1: (class a, class b, confusions, examples of a and b), most
    first; a pair counts both directions (a's nearest is b, or b's is a), a < b."""
    first = labels[nearest[:, 0].numpy()]
    pairs = Counter(tuple(sorted((int(a), int(b)))) for a, b in zip(labels, first, strict=True) if a != b)
    sizes = Counter(labels.tolist())
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
    return [(a, b, n, sizes[a] + sizes[b]) for (a, b), n in ranked]


def worst_classes(per_class: dict[int, float], count: int) -> list[tuple[int, float]]:
    """(class, recall@1), lowest first, ties by class."""
    return sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))[:count]

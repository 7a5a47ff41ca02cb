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


def pair_distances(embeddings, labels, pairs: int, seed: int, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Distances of up to ``pairs`` random positive pairs (a random item and another of its class) and as many random
    negative pairs (two items of different classes), for a histogram; deterministic given ``seed``."""
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    x = F.normalize(x, dim=1) if normalize else x
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], labels, side="left")
    sizes = np.searchsorted(labels[order], labels, side="right") - starts
    owners = np.flatnonzero(sizes > 1)
    positives = np.empty(0)
    if len(owners):
        i = rng.choice(owners, pairs)
        offset = rng.integers(0, sizes[i] - 1)  # another member: skip i's own place in its class block
        j = order[starts[i] + offset]
        j = np.where(j == i, order[starts[i] + sizes[i] - 1], j)
        positives = (x[i] - x[j]).norm(dim=1).numpy()
    a, b = rng.integers(0, len(labels), (2, pairs * 2))
    keep = labels[a] != labels[b]
    a, b = a[keep][:pairs], b[keep][:pairs]
    negatives = (x[a] - x[b]).norm(dim=1).numpy() if len(a) else np.empty(0)
    return positives, negatives

"""Clustering quality of embeddings: seeded k-means, then NMI and AMI against the labels.

NMI / AMI are scikit-learn's ``normalized_mutual_info_score`` / ``adjusted_mutual_info_score`` (arithmetic
normalisation), computed between the true labels and the k-means assignment, with as many clusters as classes by
default, as in PML's ``AccuracyCalculator`` and the DML literature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from .inputs import as_embeddings, as_labels
from .knn import DEFAULT_MEMORY_BUDGET, faiss_available

KMEANS_BACKENDS = ("auto", "torch", "faiss")
_KMEANS_PLUS_PLUS_MAX_CLUSTERS = 1024  # above this, k-means++ seeding (sequential) costs more than it gains


def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    *,
    seed: int = 0,
    max_iter: int = 50,
    backend: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Cluster the rows of ``x`` (N × D) into ``n_clusters``; return the N cluster indices (int64).

    Both backends start from the same k-means++ seeding (random distinct points above 1024 clusters, where
    sequential seeding costs more than it gains). ``faiss`` then runs ``faiss.Kmeans`` on every point (no
    subsampling); ``torch`` runs Lloyd's algorithm with chunked assignment, re-seeding empty clusters at the
    points farthest from their centroids, until no assignment changes. ``auto`` picks faiss when installed.
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"backend must be one of {KMEANS_BACKENDS}, got {backend!r}")
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of points ({n})")
    init = _seed_centroids(x.float(), n_clusters, torch.Generator().manual_seed(seed), memory_budget)
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        return _faiss_kmeans(x, init, seed, max_iter)
    return _torch_kmeans(x.float(), init, max_iter, memory_budget)


def _seed_centroids(x, n_clusters, gen, memory_budget):
    """k-means++ seeding (Arthur & Vassilvitskii 2007); random distinct points above 1024 clusters."""
    n = x.shape[0]
    if n_clusters > _KMEANS_PLUS_PLUS_MAX_CLUSTERS:
        return x[torch.randperm(n, generator=gen)[:n_clusters].to(x.device)].clone()
    first = int(torch.randint(n, (1,), generator=gen))
    picks = [first]
    _, d2 = _assign(x, x[first : first + 1], memory_budget)
    for _ in range(1, n_clusters):
        weights = d2.cpu().double()
        if weights.sum() > 0:
            pick = int(torch.multinomial(weights, 1, generator=gen))
        else:
            pick = int(torch.randint(n, (1,), generator=gen))
        picks.append(pick)
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(1))
    return x[torch.tensor(picks, device=x.device)].clone()


def _faiss_kmeans(x, init, seed, max_iter):
    import faiss
    import numpy as np

    data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    km = faiss.Kmeans(
        data.shape[1],
        init.shape[0],
        niter=max_iter,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(1, data.shape[0]),
    )
    km.train(data, init_centroids=np.ascontiguousarray(init.cpu().numpy(), dtype=np.float32))
    _, assignment = km.index.search(data, 1)
    return torch.from_numpy(assignment[:, 0].astype(np.int64))


def _assign(x, centroids, memory_budget):
    """Nearest centroid and squared distance of every row, in chunks of rows."""
    c_sq = centroids.pow(2).sum(1)
    rows = max(1, memory_budget // (4 * centroids.shape[0] + 1))
    labels, dists = [], []
    for s in range(0, x.shape[0], rows):
        chunk = x[s : s + rows]
        d = torch.addmm(c_sq.unsqueeze(0), chunk, centroids.T, alpha=-2.0)
        best, idx = d.min(dim=1)
        labels.append(idx)
        dists.append((best + chunk.pow(2).sum(1)).clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def _torch_kmeans(x, centroids, max_iter, memory_budget):
    """Lloyd iterations until no assignment changes; empty clusters move to the worst-fitted points."""
    n_clusters = centroids.shape[0]
    assignment = None
    for _ in range(max_iter):
        new_assignment, d2 = _assign(x, centroids, memory_budget)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = torch.bincount(assignment, minlength=n_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            centroids[empty] = x[d2.topk(empty.numel()).indices]
    return assignment.cpu()


def clustering_metrics(
    embeddings,
    labels,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
    normalize: bool = True,
    backend: str = "auto",
    max_iter: int = 50,
) -> dict[str, float]:
    """``{"nmi": …, "ami": …}`` of a seeded k-means clustering of ``embeddings`` against ``labels``.

    ``n_clusters`` defaults to the number of distinct labels; embeddings are L2-normalised first unless
    ``normalize=False`` (matching the retrieval metrics' cosine ranking).
    """
    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, "labels", x.shape[0])
    n_classes = int(torch.unique(y).numel())
    k = n_classes if n_clusters is None else int(n_clusters)
    if k < 1 or k > x.shape[0]:
        raise ValueError(f"n_clusters={k} must be between 1 and the number of embeddings ({x.shape[0]})")
    if normalize:
        x = F.normalize(x, dim=1)
    assignment = kmeans(x, k, seed=seed, backend=backend, max_iter=max_iter).numpy()
    y_np = y.numpy()
    return {
        "nmi": float(normalized_mutual_info_score(y_np, assignment)),
        "ami": float(adjusted_mutual_info_score(y_np, assignment)),
    }

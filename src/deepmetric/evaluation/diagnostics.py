"""Class-collapse diagnostics (Levi et al., ICCV 2021: margin losses collapse a class's modes into one point).

- ``spread_ratio``: mean distance between centroids of *different fine groups inside one coarse class*, divided by
  the mean distance between centroids of fine groups in *different coarse classes*. 0 is total collapse (the fine
  groups of a coarse class coincide); about 1 means they stay as far apart as groups of other classes.
- ``intra_class_variance``: per class, the mean squared distance of its (L2-normalised) embeddings to their centroid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import as_embeddings, as_labels


def _centroids(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, inverse, x.double())
    counts = torch.bincount(inverse, minlength=len(classes)).double().unsqueeze(1)
    return classes, sums / counts


def spread_ratio(embeddings, fine_labels, coarse_labels, *, normalize: bool = True) -> float:
    """Within-coarse / across-coarse mean distance between fine-group centroids (NaN when undefined)."""
    x = as_embeddings(embeddings, "embeddings")
    fine = as_labels(fine_labels, "fine_labels", x.shape[0])
    coarse = as_labels(coarse_labels, "coarse_labels", x.shape[0])
    if normalize:
        x = F.normalize(x, dim=1)
    classes, cents = _centroids(x, fine)
    coarse_of = torch.empty(len(classes), dtype=torch.int64)
    for i, c in enumerate(classes.tolist()):  # loop over groups, not samples
        values = torch.unique(coarse[fine == c])
        if values.numel() != 1:
            raise ValueError(f"fine class {c} has samples in several coarse classes {values.tolist()}")
        coarse_of[i] = values[0]
    dist = torch.cdist(cents, cents)
    same = coarse_of.unsqueeze(1) == coarse_of.unsqueeze(0)
    off_diagonal = ~torch.eye(len(classes), dtype=torch.bool)
    within, across = dist[same & off_diagonal], dist[~same]
    if within.numel() == 0 or across.numel() == 0:
        return float("nan")
    return float(within.mean() / across.mean())


def intra_class_variance(embeddings, labels, *, normalize: bool = True) -> dict[int, float]:
    """``{class: mean squared distance to the class centroid}``."""
    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, "labels", x.shape[0])
    if normalize:
        x = F.normalize(x, dim=1)
    classes, cents = _centroids(x, y)
    _, inverse = torch.unique(y, return_inverse=True)
    sq = (x.double() - cents[inverse]).pow(2).sum(dim=1)
    per_class = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, sq)
    per_class /= torch.bincount(inverse, minlength=len(classes)).double()
    return dict(zip(classes.tolist(), per_class.tolist(), strict=True))


def collapse_diagnostics(embeddings, labels, coarse_labels=None) -> dict[str, float]:
    """``intra_class_variance`` (mean over classes) and, when coarse labels exist, ``spread_ratio``."""
    out = {"intra_class_variance": float(np.mean(list(intra_class_variance(embeddings, labels).values())))}
    if coarse_labels is not None:
        coarse = np.asarray(coarse_labels)
        if (coarse >= 0).all():
            out["spread_ratio"] = spread_ratio(embeddings, labels, coarse)
    return out

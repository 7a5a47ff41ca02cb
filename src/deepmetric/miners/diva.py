"""The triplet miners of DiVA's tasks (Milbich, Roth et al., ECCV 2020; diva.md §2.3–2.5), vectorised.

All return triplets ``(a, p, n)`` for `DivaMarginLoss` and take an optional ``generator`` for reproducible draws.

- `DistanceWeightedTripletMiner` (class-discriminative): per anchor with another same-class sample, a uniform
  positive and a negative drawn ∝ 1/q(d), q(d) ∝ d^(D−2) (1 − d²/4)^((D−3)/2) the density of distances between
  points on S^(D−1) (Wu et al. 2017), d clipped to [0.5, 2 − ε]; no upper cut-off, as in DiVA's code.
- `SharedTripletMiner` (class-shared): ``random`` runs the distance-weighted miner on a random permutation of the
  label vector (DiVA's default); ``standard``: negative distance-weighted among other classes, positive uniform among
  samples of a third class; ``full``: the positive distance-weighted too.
- `IntraClassTripletMiner` (intra-class): B triplets, each from one random class, a, p and n drawn uniformly with
  replacement among that class's samples.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import full_precision

SHARING = ("random", "standard", "full")


def _log_inverse_density(x: torch.Tensor, lower: float) -> torch.Tensor:
    """log 1/q(d) for all pairs of L2-normalised rows (B × B)."""
    dim = x.shape[1]
    d = torch.cdist(x, x).clamp(min=lower, max=2 - 1e-4)
    return (2 - dim) * d.log() - ((dim - 3) / 2) * (1 - d.pow(2) / 4).log()


def _sample(log_w: torch.Tensor, allowed: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One column per row, ∝ exp(log_w) over ``allowed``; returns (rows that had a choice, their columns)."""
    rows = allowed.any(dim=1).nonzero().flatten()
    if rows.numel() == 0:
        return rows, rows
    logits = log_w[rows].masked_fill(~allowed[rows], float("-inf"))
    probs = torch.softmax(logits, dim=1)
    return rows, torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _uniform(allowed: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    return _sample(torch.zeros(allowed.shape, device=allowed.device), allowed, generator)


def _no_grad_normalised(embeddings):
    return F.normalize(full_precision(embeddings.detach()), dim=1)


class DistanceWeightedTripletMiner(nn.Module):
    def __init__(self, lower_cutoff: float = 0.5):
        super().__init__()
        self.lower_cutoff = lower_cutoff

    @torch.no_grad()
    def forward(self, embeddings, labels, generator: torch.Generator | None = None):
        x = _no_grad_normalised(embeddings)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        anchors, p = _uniform(same & ~eye, generator)
        log_w = _log_inverse_density(x, self.lower_cutoff)
        rows, n = _sample(log_w[anchors], ~same[anchors], generator)
        return anchors[rows], p[rows], n


class SharedTripletMiner(nn.Module):
    def __init__(self, sharing: str = "random", lower_cutoff: float = 0.5):
        super().__init__()
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
        self.sharing, self.lower_cutoff = sharing, lower_cutoff
        self.distance_weighted = DistanceWeightedTripletMiner(lower_cutoff)

    @torch.no_grad()
    def forward(self, embeddings, labels, generator: torch.Generator | None = None):
        if self.sharing == "random":
            perm = torch.randperm(len(labels), generator=generator, device="cpu").to(labels.device)
            return self.distance_weighted(embeddings, labels[perm], generator)
        x = _no_grad_normalised(embeddings)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        log_w = _log_inverse_density(x, self.lower_cutoff)
        anchors, n = _sample(log_w, ~same, generator)
        # positives: neither the anchor's class nor the negative's
        third = ~same[anchors] & ~(labels.unsqueeze(0) == labels[n].unsqueeze(1))
        weights = log_w[anchors] if self.sharing == "full" else torch.zeros_like(third, dtype=log_w.dtype)
        rows, p = _sample(weights, third, generator)
        return anchors[rows], p, n[rows]


class IntraClassTripletMiner(nn.Module):
    def __init__(self, triplets: int | None = None):
        super().__init__()
        self.triplets = triplets

    @torch.no_grad()
    def forward(self, embeddings, labels, generator: torch.Generator | None = None):
        count = self.triplets or len(labels)
        classes = torch.unique(labels)
        chosen = classes[torch.randint(len(classes), (count,), generator=generator).to(labels.device)]
        members = labels.unsqueeze(0) == chosen.unsqueeze(1)  # count × B
        draws = [_uniform(members, generator)[1] for _ in range(3)]  # every row has ≥ 1 member
        return draws[0], draws[1], draws[2]

"""EPS: easy-positive sampling (Levi, Xiao, Wang, Darrell, ICCV 2021, arXiv 2006.05162).

Each anchor's positive is its **nearest same-class sample in the batch** (itself excluded):
``p*(i) = argmin_{j ≠ i, y_j = y_i} d(z_i, z_j)``, so the positive term of a margin-based loss pulls a sample only
towards its nearest neighbour of the class, and a class made of several tight, distant sub-clusters costs nothing
(no class collapse). Negatives are chosen relative to that positive:

- ``semihard``: ``argmin_{k: y_k ≠ y_i, d_ik > d(i, p*)} d_ik`` (FaceNet); anchors without one are dropped
  (``fallback="drop"``, as PML's ``BatchEasyHardMiner``) or take their hardest negative (``fallback="hardest"``);
- ``hard``: the nearest negative; ``all``: every negative;
- ``distance_weighted``: ``negatives_per_anchor`` negatives drawn with replacement, with probability ∝ 1/q(d),
  q(d) ∝ d^(D−2) (1 − d²/4)^((D−3)/2) (Wu et al. 2017, eq. 3–4, but without eq. 4's cap λ: the weight is unbounded,
  so in high dimensions the nearest allowed negatives take nearly all the probability), d clipped below at
  ``cutoff`` and (1 − d²/4) floored at 1e-8; negatives at d ≥ ``nonzero_loss_cutoff`` are never drawn;
- ``multi_similarity``: negatives with s_ik + ε > s(i, p*) (Wang et al. 2019 mining, against the one positive;
  the positive itself is never mined away).

Returns PML's pair tuple ``(a1, p, a2, n)``, so it works with PML's and deepmetric's pair and triplet losses (a
triplet loss forms one triplet per (positive, negative) of an anchor); with a reference set (the `Miner` contract),
p and n index it. Selection runs without gradients on L2-normalised embeddings; the loss's distances keep theirs, so
gradient flows only through the chosen pairs. ``generator`` seeds the ``distance_weighted`` draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..losses.base import drop_self
from ..losses.geometry import log_inverse_sphere_density
from ..precision import full_precision
from ..registry import MINERS
from .base import Miner

NEGATIVE_STRATEGIES = ("semihard", "hard", "all", "distance_weighted", "multi_similarity")
FALLBACKS = ("drop", "hardest")


@MINERS.register("easy_positive")
class EasyPositiveMiner(Miner):
    """EPS positives (the k nearest same-class samples) with a choice of negatives.

    Args:
        negatives: one of ``NEGATIVE_STRATEGIES``. fallback: for ``semihard``, ``drop`` or ``hardest``.
        k: positives per anchor (the k nearest; 1 in the paper).
        duplicate_threshold: cosine similarity above which a same-class sample is a near-duplicate and never the
            positive (e.g. 0.9999, as Xuan et al.); None keeps all.
        cutoff, nonzero_loss_cutoff, negatives_per_anchor: ``distance_weighted`` parameters.
        epsilon: the ``multi_similarity`` margin.
    """

    tuple_size = 4

    def __init__(
        self,
        negatives: str = "semihard",
        fallback: str = "drop",
        k: int = 1,
        duplicate_threshold: float | None = None,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        negatives_per_anchor: int = 1,
        epsilon: float = 0.1,
    ):
        super().__init__()
        if negatives not in NEGATIVE_STRATEGIES:
            raise ValueError(f"negatives must be one of {NEGATIVE_STRATEGIES}, got {negatives!r}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if k < 1 or negatives_per_anchor < 1:
            raise ValueError(f"k and negatives_per_anchor must be ≥ 1, got {k} and {negatives_per_anchor}")
        self.negatives, self.fallback, self.k = negatives, fallback, k
        self.duplicate_threshold = duplicate_threshold
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff
        self.negatives_per_anchor, self.epsilon = negatives_per_anchor, epsilon

    def mine(self, embeddings, labels, ref_emb, ref_labels, own_ref, generator, *, self_index=None):
        """``(a1, p, a2, n)`` index tensors; with ``ref_emb`` the indices of p and n point into the reference set."""
        x = F.normalize(full_precision(embeddings.detach()), dim=1)
        r = x if own_ref else F.normalize(full_precision(ref_emb.detach()), dim=1)
        sim = x @ r.T
        dist = (2 - 2 * sim).clamp_min(0).sqrt()
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        candidate = same.clone()
        if own_ref:
            candidate.fill_diagonal_(False)
        drop_self(candidate, self_index)  # a memory's copy of the anchor itself
        if self.duplicate_threshold is not None:
            candidate &= sim <= self.duplicate_threshold
        negative = ~same

        # k nearest positives; argmin/topk on +inf-masked distances, ties to the lowest index
        masked = dist.masked_fill(~candidate, math.inf)
        k = min(self.k, masked.shape[1])
        pos_dist, pos_idx = _k_smallest(masked, k)
        pos_ok = torch.isfinite(pos_dist)
        a_pos = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand(-1, k)
        # the negatives are chosen against the nearest positive
        d_ap = pos_dist[:, :1]
        has_pos = pos_ok[:, 0]
        a_neg, n = self._negatives(dist, sim, negative, d_ap, has_pos, x.shape[1], generator)
        kept = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        kept[a_neg] = True
        pos_ok &= kept.unsqueeze(1)  # anchors dropped by the negative rule lose their positives too
        return a_pos[pos_ok], pos_idx[pos_ok], a_neg, n

    def _negatives(self, dist, sim, negative, d_ap, has_pos, dim, generator):
        B = dist.shape[0]
        rows = torch.arange(B, device=dist.device)
        neg = negative & has_pos.unsqueeze(1)
        if self.negatives == "all":
            a, n = neg.nonzero(as_tuple=True)
            return a, n
        if self.negatives == "multi_similarity":
            s_ap = 1 - d_ap.pow(2) / 2  # similarity of the chosen positive
            a, n = (neg & (sim + self.epsilon > s_ap)).nonzero(as_tuple=True)
            return a, n
        if self.negatives == "hard":
            d = dist.masked_fill(~neg, math.inf)
            n = d.argmin(dim=1)
            ok = torch.isfinite(d[rows, n])
            return rows[ok], n[ok]
        if self.negatives == "semihard":
            semi = neg & (dist > d_ap)
            d = dist.masked_fill(~semi, math.inf)
            n = d.argmin(dim=1)
            ok = torch.isfinite(d[rows, n])
            if self.fallback == "hardest":
                hardest = dist.masked_fill(~neg, math.inf)
                h = hardest.argmin(dim=1)
                use = ~ok & torch.isfinite(hardest[rows, h])
                n = torch.where(use, h, n)
                ok = ok | use
            return rows[ok], n[ok]
        return self._distance_weighted(dist, neg, rows, dim, generator)

    def _distance_weighted(self, dist, neg, rows, dim, generator):
        """Wu et al. 2017: sample negatives ∝ 1/q(d) on the unit sphere (log-space for stability)."""
        log_w = log_inverse_sphere_density(dist.clamp_min(self.cutoff), dim)
        allowed = neg & (dist < self.nonzero_loss_cutoff)
        log_w = log_w.masked_fill(~allowed, -math.inf)
        has = allowed.any(dim=1)
        w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values.clamp_min(-1e30))
        w = w.masked_fill(~allowed, 0)
        # no host sync: every row draws (a row without an allowed negative from uniform weights) and the draws of
        # such rows are dropped by the mask
        w = torch.where(has.unsqueeze(1), w, torch.ones_like(w))
        n = torch.multinomial(w, self.negatives_per_anchor, replacement=True, generator=generator)
        a = rows.unsqueeze(1).expand_as(n)
        keep = has.unsqueeze(1).expand_as(n)
        return a[keep], n[keep]


def _k_smallest(values: torch.Tensor, k: int):
    """k smallest per row, ascending, ties broken towards the lowest column index."""
    if k == 1:
        idx = values.argmin(dim=1, keepdim=True)  # documented to return the first minimum
        return values.gather(1, idx), idx
    # stable sort keeps equal values in column order
    vals, idx = values.sort(dim=1, stable=True)
    return vals[:, :k], idx[:, :k]

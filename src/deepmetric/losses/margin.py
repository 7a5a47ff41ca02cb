"""Margin loss with a learnable per-class boundary β (Wu, Manmatha, Smola, Krähenbühl 2017, eq. 5), as in DiVA.

For triplets (a, p, n) on L2-normalised embeddings, with d = sqrt(‖·‖² + 1e-8) and β_t = β[y_a]:

    ℓ⁺ = [d(a, p) − β_t + α]₊        ℓ⁻ = [β_t − d(a, n) + α]₊        L = Σ_t (ℓ⁺_t + ℓ⁻_t) / N

``normalization`` chooses N: ``reference`` (DiVA's code: triplets with at least one active hinge),
``active_terms`` (active hinge terms counted separately), or ``triplets`` (all triplets). With nothing active the
loss is 0 (and still differentiable). β is indexed by the anchor's true class for every DiVA task. With a reference
set (``ref_emb``, ``ref_labels``), p and n index it and β is still the anchor's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import LOSSES
from .base import MetricLoss

NORMALIZATIONS = ("reference", "active_terms", "triplets")


@LOSSES.register("diva_margin")
class DivaMarginLoss(MetricLoss):
    """Triplets ``(a, p, n)`` from a miner: ``loss(embeddings, labels, indices_tuple)``; with a reference set, p and n
    index it. A miner's pairs ``(a1, p, a2, n)`` (EPS) become every (positive, negative) of an anchor."""

    indices = "triplets"

    def __init__(self, num_classes: int, margin: float = 0.2, beta: float = 1.2, learn_beta: bool = True,
                 normalization: str = "reference"):  # fmt: skip
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.margin, self.normalization = margin, normalization
        self.beta = nn.Parameter(torch.full((num_classes,), float(beta)), requires_grad=learn_beta)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, own_ref, *, self_index=None):
        a, p, n = indices_tuple  # the miner's choice (a sample's own copy in a memory is its miner's to exclude)
        if a.numel() == 0:
            return self.zero_loss(embeddings)
        x = F.normalize(embeddings, dim=1)
        r = x if own_ref else F.normalize(ref_emb, dim=1)
        d_ap = ((x[a] - r[p]).pow(2).sum(1) + 1e-8).sqrt()
        d_an = ((x[a] - r[n]).pow(2).sum(1) + 1e-8).sqrt()
        beta = self.beta[labels[a]]
        pos = F.relu(d_ap - beta + self.margin)
        neg = F.relu(beta - d_an + self.margin)
        total = (pos + neg).sum()
        if self.normalization == "reference":
            count = ((pos > 0) | (neg > 0)).sum()
        elif self.normalization == "active_terms":
            count = (pos > 0).sum() + (neg > 0).sum()
        else:
            count = torch.tensor(a.numel(), device=embeddings.device)
        return total / count.clamp_min(1)

"""The triplet miners of DiVA's tasks (Milbich, Roth et al., ECCV 2020; as its official code, ``batchminer/``),
vectorised.

All follow the miner contract (`Miner`): ``miner(embeddings, labels, ref_emb=None, ref_labels=None, generator=None)``
→ triplets ``(a, p, n)`` for `DivaMarginLoss`, anchors from the batch, positives and negatives from the reference set
(the batch itself by default); ``generator`` makes the draws reproducible.

- `DistanceWeightedTripletMiner` (class-discriminative; ``distance.py``): per anchor with another same-class sample, a
  uniform positive and a negative drawn ∝ 1/q(d), q(d) ∝ d^(D−2) (1 − d²/4)^((D−3)/2) the density of distances
  between points on S^(D−1) (Wu et al. 2017, eq. 3–4), d clipped to [0.5, 2 − 10⁻⁴]; no upper cut-off and no cap λ,
  as in DiVA's code.
- `SharedTripletMiner` (class-shared): ``random`` runs the distance-weighted miner on a random permutation of the
  label vector (DiVA's default; with a reference set, of the batch's and the reference's labels together);
  ``standard``: negative distance-weighted among other classes, positive uniform among samples of a third class;
  ``full``: the positive distance-weighted too.
- `IntraClassTripletMiner` (intra-class; ``intra_random.py``): B triplets (or ``triplets``), each from one random
  class, a, p and n drawn uniformly with replacement among that class's samples (a from the batch, p and n from the
  reference set, the class one both have).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses.base import drop_self
from ..losses.geometry import log_inverse_sphere_density
from ..precision import full_precision
from ..registry import MINERS
from .base import Miner

SHARING = ("random", "standard", "full")
FAR = 2 - 1e-4  # the largest distance kept, as DiVA's code


def _log_inverse_density(x: torch.Tensor, r: torch.Tensor, lower: float) -> torch.Tensor:
    """log 1/q(d) between L2-normalised rows of ``x`` and ``r`` (B × R)."""
    return log_inverse_sphere_density(torch.cdist(x, r).clamp(min=lower, max=FAR), x.shape[1])


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


@MINERS.register("diva_distance_weighted")
class DistanceWeightedTripletMiner(Miner):
    def __init__(self, lower_cutoff: float = 0.5):
        super().__init__()
        self.lower_cutoff = lower_cutoff

    def mine(self, embeddings, labels, ref_emb, ref_labels, own_ref, generator, *, self_index=None):
        x = _no_grad_normalised(embeddings)
        r = x if own_ref else _no_grad_normalised(ref_emb)
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        positive = same.clone()
        if own_ref:
            positive.fill_diagonal_(False)
        drop_self(positive, self_index)
        negative = ~same if self_index is None else drop_self(~same, self_index)  # (permuted labels: self may differ)
        anchors, p = _uniform(positive, generator)
        log_w = _log_inverse_density(x, r, self.lower_cutoff)
        rows, n = _sample(log_w[anchors], negative[anchors], generator)
        return anchors[rows], p[rows], n


@MINERS.register("diva_shared")
class SharedTripletMiner(Miner):
    def __init__(self, sharing: str = "random", lower_cutoff: float = 0.5):
        super().__init__()
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
        self.sharing, self.lower_cutoff = sharing, lower_cutoff
        self.distance_weighted = DistanceWeightedTripletMiner(lower_cutoff)

    def mine(self, embeddings, labels, ref_emb, ref_labels, own_ref, generator, *, self_index=None):
        if self.sharing == "random":
            if own_ref:
                perm = torch.randperm(len(labels), generator=generator, device="cpu").to(labels.device)
                return self.distance_weighted(embeddings, labels[perm], generator=generator)
            joint = torch.cat([labels, ref_labels])
            joint = joint[torch.randperm(len(joint), generator=generator, device="cpu").to(joint.device)]
            return self.distance_weighted(embeddings, joint[: len(labels)], ref_emb, joint[len(labels) :],
                                          generator=generator, self_index=self_index)  # fmt: skip
        x = _no_grad_normalised(embeddings)
        r = x if own_ref else _no_grad_normalised(ref_emb)
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        log_w = _log_inverse_density(x, r, self.lower_cutoff)
        anchors, n = _sample(log_w, ~same, generator)  # (a memory's own copy has the anchor's class: never chosen)
        # positives: neither the anchor's class nor the negative's
        third = ~same[anchors] & ~(ref_labels.unsqueeze(0) == ref_labels[n].unsqueeze(1))
        weights = log_w[anchors] if self.sharing == "full" else torch.zeros_like(third, dtype=log_w.dtype)
        rows, p = _sample(weights, third, generator)
        return anchors[rows], p, n[rows]


@MINERS.register("diva_intra")
class IntraClassTripletMiner(Miner):
    def __init__(self, triplets: int | None = None):
        super().__init__()
        self.triplets = triplets

    def mine(self, embeddings, labels, ref_emb, ref_labels, own_ref, generator, *, self_index=None):
        count = self.triplets or len(labels)  # draws with replacement, p = a included, in a batch as in a memory
        classes = torch.unique(labels)
        if not own_ref:
            classes = classes[torch.isin(classes, ref_labels)]
            if len(classes) == 0:
                empty = labels.new_zeros(0, dtype=torch.long)
                return empty, empty.clone(), empty.clone()
        chosen = classes[torch.randint(len(classes), (count,), generator=generator).to(labels.device)]
        members = labels.unsqueeze(0) == chosen.unsqueeze(1)  # count × B
        ref_members = members if own_ref else ref_labels.unsqueeze(0) == chosen.unsqueeze(1)  # count × R
        # every row has ≥ 1 member
        a, p, n = (_uniform(m, generator)[1] for m in (members, ref_members, ref_members))
        return a, p, n

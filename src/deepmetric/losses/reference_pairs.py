"""The four pair losses CCP is evaluated with (Gürbüz, Can, Alatan, WACV 2024: C1, C2, MS and triplet, formulas as in
its official code), written for an arbitrary reference set.

Each loss takes anchors (B × D) and, optionally, a reference set (R × D) with its labels, PML-style:
``loss(embeddings, labels, ref_emb=proxies, ref_labels=proxy_labels)``. Without a reference set the batch is its own
reference and each anchor's own pair is dropped (with a memory's ``self_index``, its own copy). Positives are
references of the anchor's label, negatives the rest; or, given a miner's pairs ``(a1, p, a2, n)`` (e.g. EPS) or
triplets, exactly the mined pairs (a pair mined twice counts once). Inputs are used as given (CCP normalises them
first with v / max(1, ‖v‖)); distances are Euclidean, similarities dot products.

- `CosineContrastiveLoss` (C1; Hadsell et al. 2006, in XBM's cosine form): (1/B)[Σ_pos (1 − ε − s)_+ + Σ_neg (s − m)_+].
- `MarginContrastiveLoss` (C2; Wu et al. 2017, contrastive with a positive margin): mean over non-zero positive
  terms of (d − m⁺)_+ plus mean over non-zero negative terms of (m⁻ − d)_+.
- `PairMultiSimilarityLoss` (MS; Wang et al. 2019, Eq. 9 without pair mining): mean over anchors of
  (1/α) log(1 + Σ_pos e^{−α(s − λ)}) + (1/β) log(1 + Σ_neg e^{β(s − λ)}).
- `AllTripletsMarginLoss` (triplet; Schroff et al. 2015): mean over the non-zero (d_ap − d_an + m)_+ of *all* triplets
  (anchor, positive reference, negative reference). Never forms the B × R × R tensor: per anchor the negative
  distances are sorted once, and for a positive with threshold t = d_ap + m the active negatives are a prefix
  (d_an < t) whose count and sum come from a binary search and prefix sums, so memory is O(B · R). With ~34,000
  proxies (SOP, K = 4) that is what makes the triplet variant run at all (the official code's dense triplet tensor
  cannot).
"""

from __future__ import annotations

import torch

from ..registry import LOSSES
from .base import MetricLoss, drop_self, pair_masks


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B × R Euclidean distances, sqrt(relu(‖a‖² + ‖b‖² − 2a·b)) with a finite gradient at 0."""
    sq = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T
    return sq.clamp_min(1e-12).sqrt()


def _mean_nonzero(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    active = mask & (values > 0)
    count = active.sum()
    return (values * active).sum() / count.clamp_min(1)


class _ReferencePairLoss(MetricLoss):
    """Every (anchor, reference) pair: positives share the anchor's label, negatives do not; or a miner's pairs."""

    indices = "pairs"

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, own_ref, *, self_index=None):
        if indices_tuple is not None:
            positive, negative = pair_masks(indices_tuple, len(embeddings), len(ref_emb), embeddings.device)
        else:
            same = labels.view(-1, 1) == ref_labels.view(1, -1)
            positive, negative = same.clone(), ~same
        if own_ref:
            positive.fill_diagonal_(False)
        drop_self(positive, self_index)
        return self.compute(embeddings, ref_emb, positive, negative)


@LOSSES.register("cosine_contrastive", "ccp_c1")
class CosineContrastiveLoss(_ReferencePairLoss):
    def __init__(self, margin: float = 0.5, epsilon: float = 1e-5):
        super().__init__()
        self.margin, self.epsilon = margin, epsilon

    def compute(self, a, r, pos, neg):
        s = a @ r.T
        pull = torch.where(pos, (1 - self.epsilon - s).clamp_min(0), 0)
        push = torch.where(neg, (s - self.margin).clamp_min(0), 0)
        return (pull.sum() + push.sum()) / a.shape[0]


@LOSSES.register("margin_contrastive", "ccp_c2")
class MarginContrastiveLoss(_ReferencePairLoss):
    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5):
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def compute(self, a, r, pos, neg):
        d = euclidean(a, r)
        return _mean_nonzero((d - self.pos_margin).clamp_min(0), pos) + _mean_nonzero(
            (self.neg_margin - d).clamp_min(0), neg
        )


@LOSSES.register("pair_multi_similarity", "ccp_ms")
class PairMultiSimilarityLoss(_ReferencePairLoss):
    def __init__(self, alpha: float = 2.0, beta: float = 40.0, base: float = 0.5):
        super().__init__()
        self.alpha, self.beta, self.base = alpha, beta, base

    @staticmethod
    def _soft_plus_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log(1 + Σ_mask e^x) per row, stably (the 1 is e^0 joined to the log-sum-exp)."""
        x = torch.where(mask, x, float("-inf"))
        return torch.logsumexp(torch.cat([x, torch.zeros_like(x[:, :1])], dim=1), dim=1)

    def compute(self, a, r, pos, neg):
        s = a @ r.T
        pos_term = self._soft_plus_sum(-self.alpha * (s - self.base), pos) / self.alpha
        neg_term = self._soft_plus_sum(self.beta * (s - self.base), neg) / self.beta
        return (pos_term + neg_term).mean()


@LOSSES.register("all_triplets_margin", "ccp_triplet")
class AllTripletsMarginLoss(_ReferencePairLoss):
    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def compute(self, a, r, pos, neg):
        d = euclidean(a, r)
        neg_d, _ = torch.where(neg, d, float("inf")).sort(dim=1)  # ascending; non-negatives last
        finite = torch.isfinite(neg_d)
        prefix = torch.cat([torch.zeros_like(neg_d[:, :1]), torch.where(finite, neg_d, 0).cumsum(1)], dim=1)
        threshold = d + self.margin  # B × R: the threshold of every (anchor, positive) pair
        count = torch.searchsorted(neg_d.detach().contiguous(), threshold.detach().contiguous())  # d_an < t
        count = torch.where(pos, count, 0)
        # Σ_n (t − d_an) over the active negatives = count · t − (sum of the count smallest negatives)
        total = (count * threshold - prefix.gather(1, count)).where(pos, 0).sum()
        return total / count.sum().clamp_min(1)

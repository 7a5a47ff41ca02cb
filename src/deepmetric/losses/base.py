"""The base of deepmetric's own losses (and the input checks its miners share), as PML's base classes.

Call contract: ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None, *, self_index=None)``
→ a scalar. ``embeddings`` is B × D and ``labels`` has B entries; ``ref_emb`` (R × D) and ``ref_labels`` (R), given
together, are the set the batch is compared with (e.g. proxies), the batch itself when not given: then a sample's
pair with itself is no pair. ``self_index`` (B positions into the reference set, with ``ref_emb`` only) says where a
reference set holds each sample's own copy, as a cross-batch memory does (`deepmetric.losses.memory`): that pair is
no pair either. ``indices_tuple`` holds a miner's indices, into the batch for anchors and into the reference set for
positives and negatives: triplets ``(a, p, n)`` or PML's pairs ``(a1, p, a2, n)``.

An empty batch or reference set has no pairs: the loss is 0, still connected to the embeddings and to the loss's
trainable parameters so that ``backward`` works (as PML's pair losses return 0).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_inputs(
    embeddings, labels, ref_emb=None, ref_labels=None, who: str = "", self_index=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref_emb, ref_labels)``: the given reference set or the batch itself; a clear error on any bad shape."""
    who = f"{who}: " if who else ""
    if self_index is not None and (
        ref_emb is None or not isinstance(self_index, torch.Tensor) or self_index.shape != (len(embeddings),)
    ):
        raise ValueError(
            f"{who}self_index must be a 1-D tensor with one reference position per embedding, given with ref_emb: "
            f"embeddings {_shape(embeddings)}, self_index {_shape(self_index)}"
        )
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError(f"{who}embeddings must be a 2-D tensor (batch × dim), got {_shape(embeddings)}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != len(embeddings):
        raise ValueError(
            f"{who}labels must be a 1-D tensor with one label per embedding: embeddings {_shape(embeddings)}, "
            f"labels {_shape(labels) if labels is not None else None}"
        )
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError(f"{who}give both ref_emb and ref_labels, or neither")
    if ref_emb is None:
        return embeddings, labels
    if not isinstance(ref_emb, torch.Tensor) or ref_emb.dim() != 2 or ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"{who}ref_emb must be a 2-D tensor with the embeddings' dimension {embeddings.shape[1]}, "
            f"got {_shape(ref_emb)}"
        )
    if not isinstance(ref_labels, torch.Tensor) or ref_labels.dim() != 1 or len(ref_labels) != len(ref_emb):
        raise ValueError(
            f"{who}ref_labels must be a 1-D tensor with one label per ref_emb row: ref_emb {_shape(ref_emb)}, "
            f"ref_labels {_shape(ref_labels)}"
        )
    return ref_emb, ref_labels


class MetricLoss(nn.Module):
    """Base of deepmetric's own losses: checks the inputs, resolves the reference set, calls ``compute_loss``.

    ``indices``: what ``indices_tuple`` may be; ``None``: the loss uses every pair and takes no miner; ``"pairs"``:
    every pair, or a miner's pairs ``(a1, p, a2, n)`` or triplets (used as their pairs); ``"triplets"``: it needs a
    miner's triplets ``(a, p, n)`` or pairs (every positive of an anchor with every negative, `pairs_to_triplets`).
    """

    indices: str | None = None

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None, *,
                self_index=None) -> torch.Tensor:  # fmt: skip
        name = type(self).__name__
        if self.indices is None and indices_tuple is not None:
            raise ValueError(f"{name} uses every pair; it takes no miner")
        if indices_tuple is not None and len(indices_tuple) not in (3, 4):
            raise ValueError(f"{name} takes a miner's triplets (a, p, n) or pairs (a1, p, a2, n), got "
                             f"{len(indices_tuple)} index tensors")  # fmt: skip
        if self.indices == "triplets" and indices_tuple is None:
            raise ValueError(f"{name} needs triplets (a, p, n) or pairs (a1, p, a2, n) from a miner")
        own_ref = ref_emb is None and ref_labels is None
        ref_emb, ref_labels = check_inputs(embeddings, labels, ref_emb, ref_labels, name, self_index)
        if len(embeddings) == 0 or len(ref_emb) == 0:
            return self.zero_loss(embeddings)
        if self.indices == "triplets" and len(indices_tuple) == 4:
            indices_tuple = pairs_to_triplets(*indices_tuple)
        return self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, own_ref,
                                 self_index=self_index)  # fmt: skip

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, own_ref: bool, *,
                     self_index=None) -> torch.Tensor:  # fmt: skip
        """The loss of a non-empty batch; ``own_ref``: the reference set is the batch itself; ``self_index``: where
        a given reference set holds each sample's own copy (or None)."""
        raise NotImplementedError

    def zero_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        """0, connected to the embeddings and to every trainable parameter of the loss (zero gradients)."""
        zero = embeddings.sum() * 0
        for p in self.parameters():
            if p.requires_grad:
                zero = zero + p.sum() * 0
        return zero


def drop_self(mask: torch.Tensor, self_index: torch.Tensor | None) -> torch.Tensor:
    """``mask`` (B × R) without each anchor's own copy in the reference set (in place; no host sync)."""
    if self_index is not None:
        mask[torch.arange(len(self_index), device=mask.device), self_index] = False
    return mask


def pair_masks(indices_tuple, num_anchors: int, num_refs: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) B × R masks of a miner's pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)`` (as PML's
    ``convert_to_pairs``: a triplet gives its positive and its negative pair); a pair mined twice counts once."""
    if len(indices_tuple) == 3:
        a, p, n = indices_tuple
        indices_tuple = (a, p, a, n)
    a1, p, a2, n = indices_tuple
    positive = torch.zeros(num_anchors, num_refs, dtype=torch.bool, device=device)
    negative = torch.zeros_like(positive)
    positive[a1, p] = True
    negative[a2, n] = True
    return positive, negative


def pairs_to_triplets(a1, p, a2, n) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ``(a, p, n)`` with ``(a, p)`` a positive pair and ``(a, n)`` a negative pair of the same anchor (PML's
    ``convert_to_triplets`` without its per-anchor cap), without forming B × R × R."""
    if a1.numel() == 0 or a2.numel() == 0:
        empty = a1.new_zeros(0, dtype=torch.long)
        return empty, empty.clone(), empty.clone()
    anchors, order = a2.sort(stable=True)
    negatives = n[order]
    start = torch.searchsorted(anchors, a1)
    count = torch.searchsorted(anchors, a1, right=True) - start  # negatives of each positive pair's anchor
    a, pos = a1.repeat_interleave(count), p.repeat_interleave(count)
    first = start.repeat_interleave(count)
    within = torch.arange(len(a), device=a.device) - (count.cumsum(0) - count).repeat_interleave(count)
    return a, pos, negatives[first + within]

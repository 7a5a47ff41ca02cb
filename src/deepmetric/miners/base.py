"""The base of deepmetric's miners, as PML's ``BaseMiner``.

Call contract: ``miner(embeddings, labels, ref_emb=None, ref_labels=None, generator=None, self_index=None)`` → a
tuple of index tensors: triplets ``(a, p, n)`` or PML's pairs ``(a1, p, a2, n)``. Anchors index the batch; positives
and negatives index the reference set (``ref_emb``, ``ref_labels``, given together), the batch itself when none is
given: then no sample is its own positive. ``self_index`` (B positions into a given reference set) says where it
holds each sample's own copy, as a cross-batch memory does: that copy is never the sample's positive, and is excluded
before the choice (EPS's nearest positive is then the nearest *other* one). Selection runs without gradients.
``generator`` makes the random draws reproducible (None: the global RNG). An empty batch or reference set gives empty
index tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..losses.base import check_inputs


class Miner(nn.Module):
    """Base of deepmetric's miners: checks the inputs, resolves the reference set, calls ``mine`` without autograd.

    ``tuple_size``: 3 for triplets ``(a, p, n)``, 4 for PML's pairs ``(a1, p, a2, n)``.
    """

    tuple_size: int = 3

    @torch.no_grad()
    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, generator: torch.Generator | None = None,
                self_index: torch.Tensor | None = None):  # fmt: skip
        own_ref = ref_emb is None and ref_labels is None
        ref_emb, ref_labels = check_inputs(embeddings, labels, ref_emb, ref_labels, type(self).__name__, self_index)
        if len(embeddings) == 0 or len(ref_emb) == 0:
            return tuple(torch.zeros(0, dtype=torch.long, device=labels.device) for _ in range(self.tuple_size))
        return self.mine(embeddings, labels, ref_emb, ref_labels, own_ref, generator, self_index=self_index)

    def mine(self, embeddings, labels, ref_emb, ref_labels, own_ref: bool, generator, *,
             self_index=None) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """The index tuple of a non-empty batch; ``own_ref``: the reference set is the batch itself; ``self_index``:
        where a given reference set holds each sample's own copy (or None)."""
        raise NotImplementedError

"""The base of deepmetric's own losses (and the input checks its miners share), as PML's base classes.

Call contract: ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)`` → a scalar.
``embeddings`` is B × D and ``labels`` has B entries; ``ref_emb`` (R × D) and ``ref_labels`` (R), given together, are
the set the batch is compared with (e.g. proxies), the batch itself when not given: then a sample's pair with
itself is no pair. ``indices_tuple`` holds a miner's indices, into the batch for anchors and into the reference set
for positives and negatives.

An empty batch or reference set has no pairs: the loss is 0, still connected to the embeddings and to the loss's
trainable parameters so that ``backward`` works (as PML's pair losses return 0).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_inputs(embeddings, labels, ref_emb=None, ref_labels=None, who: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref_emb, ref_labels)``: the given reference set or the batch itself; a clear error on any bad shape."""
    who = f"{who}: " if who else ""
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

    ``indices``: what ``indices_tuple`` must be; ``None``: the loss uses every pair and takes no miner;
    ``"triplets"``: it needs triplets ``(a, p, n)`` from a miner.
    """

    indices: str | None = None

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None) -> torch.Tensor:
        name = type(self).__name__
        if self.indices is None and indices_tuple is not None:
            raise ValueError(f"{name} uses every pair; it takes no miner")
        if self.indices == "triplets" and (indices_tuple is None or len(indices_tuple) != 3):
            raise ValueError(f"{name} needs triplets (a, p, n) from a miner")
        own_ref = ref_emb is None and ref_labels is None
        ref_emb, ref_labels = check_inputs(embeddings, labels, ref_emb, ref_labels, name)
        if len(embeddings) == 0 or len(ref_emb) == 0:
            return self.zero_loss(embeddings)
        return self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, own_ref)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, own_ref: bool) -> torch.Tensor:
        """The loss of a non-empty batch; ``own_ref``: the reference set is the batch itself."""
        raise NotImplementedError

    def zero_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        """0, connected to the embeddings and to every trainable parameter of the loss (zero gradients)."""
        zero = embeddings.sum() * 0
        for p in self.parameters():
            if p.requires_grad:
                zero = zero + p.sum() * 0
        return zero

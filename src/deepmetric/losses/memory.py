"""Cross-batch memory (XBM: Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020) as a
reference-set provider for every pair-based loss and miner, and the composition of a loss with its miner and memory.

`CrossBatchMemory` is a FIFO queue of the last ``size`` embeddings and labels of past (global) batches, without
gradient. At a step with the memory on, `references` writes the current batch, detached, into the queue's next
slots and returns the queue's filled part as the reference set: the batch is the queries (anchors, with gradient),
the queue the references, and each sample's own copy in the queue is no pair of it (``self_index``). This is
pytorch-metric-learning's ``CrossBatchMemory`` contract, ring layout included, so a loss or miner sees the same
references in the same order (tests/unit/losses/test_memory.py compares loss values and gradients with PML's over
several enqueue steps). deepmetric's own losses and miners take ``self_index`` and exclude the own copy before they
choose (EPS's nearest positive is the nearest *other* sample); PML's are given PML's pairs with the own copy removed
afterwards, as PML's wrapper does.

`pair_loss` composes as XBM's own code: ``batch_weight · ℓ(B, B) + weight · ℓ(B, M)`` from step ``warmup_steps`` + 1
on, ℓ(B, B) alone before; the queue starts filling with the first memory step (XBM's start iteration: the early
network drifts fast, so its embeddings would be stale references). ``batch_weight = 0`` is PML's wrapper alone.

The batch enters the queue in `step_end` (the method's ``on_step_end``, after the optimiser step), not in the forward
pass, so a forward that is not a training step leaves the queue alone; rows that are not finite (a step skipped by
``train.skip_nonfinite_steps``) enter as zeros rather than poisoning every later step. The queue, its fill level,
write position and step count are buffers (in the method's state dict: resume is exact); host copies of the counters
keep the training step free of device synchronisation. Under torchrun the methods pass the globally gathered batch,
so every rank holds the same queue and the loss is the one-process loss at the global batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import MetricLoss


class CrossBatchMemory(nn.Module):
    """The queue of ``size`` past embeddings (``dim`` wide) and labels, with its schedule and weights.

    Args:
        size: references kept (at least one global batch). dim: embedding width.
        warmup_steps: steps trained on the batch alone first. weight: of ℓ(batch, memory).
        batch_weight: of ℓ(batch, batch) beside it once the memory is on.
    """

    def __init__(self, size: int, dim: int, *, warmup_steps: int = 0, weight: float = 1.0, batch_weight: float = 1.0):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a cross-batch memory needs size ≥ 1 and dim ≥ 1, got size={size}, dim={dim}")
        if warmup_steps < 0 or weight < 0 or batch_weight < 0:
            raise ValueError(f"warmup_steps, weight and batch_weight must be ≥ 0, got {warmup_steps}, {weight}, "
                             f"{batch_weight}")  # fmt: skip
        self.size, self.warmup_steps = int(size), int(warmup_steps)
        self.weight, self.batch_weight = float(weight), float(batch_weight)
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._filled = self._position = self._steps = 0  # host copies: no device sync in the training step
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync())

    @classmethod
    def from_config(cls, memory, dim: int) -> CrossBatchMemory | None:
        """The memory a config section (``size``, ``warmup_steps``, ``weight``, ``batch_weight``) asks for; None for
        ``size`` 0."""
        if not memory.size:
            return None
        return cls(memory.size, dim, warmup_steps=memory.warmup_steps, weight=memory.weight,
                   batch_weight=memory.batch_weight)  # fmt: skip

    def extra_repr(self) -> str:
        return (f"size={self.size}, dim={self.embeddings.shape[1]}, warmup_steps={self.warmup_steps}, "
                f"weight={self.weight}, batch_weight={self.batch_weight}")  # fmt: skip

    @property
    def active(self) -> bool:
        """Whether the next training step uses the memory (the warm-up is over)."""
        return self._steps >= self.warmup_steps

    @property
    def held(self) -> int:
        """Embeddings the queue holds."""
        return self._filled

    def references(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """``(ref_emb, ref_labels, self_index)``: the queue with this batch (detached) written into its next slots,
        its filled part, and each sample's slot. The batch is kept, to be committed by `step_end`."""
        n = len(embeddings)
        if n > self.size:
            raise ValueError(f"a batch of {n} does not fit a cross-batch memory of {self.size}: give it a size ≥ {n}")
        slots = (self._position + torch.arange(n, device=embeddings.device)) % self.size
        current = embeddings.detach().to(self.embeddings.dtype)
        labels = labels.to(self.labels.dtype)
        count = min(self._filled + n, self.size)  # before the queue is full its writes are contiguous from 0
        ref_emb = self.embeddings.index_copy(0, slots, current)[:count]
        ref_labels = self.labels.index_copy(0, slots, labels)[:count]
        self._pending = (slots, current, labels)
        return ref_emb.to(embeddings.dtype), ref_labels, slots

    @torch.no_grad()
    def step_end(self, step: int) -> None:
        """After optimizer step ``step``: the batch of that step into the queue (if it used the memory)."""
        if self._pending is not None:
            slots, current, labels = self._pending
            finite = torch.isfinite(current).all(dim=1, keepdim=True)
            self.embeddings.index_copy_(0, slots, current.masked_fill(~finite, 0.0))
            self.labels.index_copy_(0, slots, labels)
            self._filled = min(self._filled + len(slots), self.size)
            self._position = (self._position + len(slots)) % self.size
            self.filled.fill_(self._filled)
            self.position.fill_(self._position)
            self._pending = None
        self._steps = int(step)
        self.steps.fill_(self._steps)

    def _sync(self) -> None:
        """After loading a state dict (resume): the host copies from the restored buffers (once, not per step)."""
        self._filled, self._position, self._steps = int(self.filled), int(self.position), int(self.steps)
        self._pending = None


# ------------------------------------------------------------------------------------------------ composition
def drop_self_pairs(indices_tuple: tuple, self_index: torch.Tensor | None) -> tuple:
    """A miner's triplets or pairs without those whose positive is the anchor's own copy (PML's
    ``remove_self_comparisons``)."""
    if self_index is None:
        return indices_tuple
    if len(indices_tuple) == 3:
        a, p, n = indices_tuple
        keep = p != self_index[a]
        return a[keep], p[keep], n[keep]
    a1, p, a2, n = indices_tuple
    keep = p != self_index[a1]
    return a1[keep], p[keep], a2, n


def all_pairs(labels: torch.Tensor, ref_labels: torch.Tensor) -> tuple:
    """Every (anchor, reference) pair as PML's ``(a1, p, a2, n)``: positives share the label, negatives do not."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    a1, p = torch.where(same)
    a2, n = torch.where(~same)
    return a1, p, a2, n


def mined_loss(loss: nn.Module, miner: nn.Module | None, embeddings: torch.Tensor, labels: torch.Tensor,
               ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
               self_index: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``loss`` of the batch against ``ref_emb`` (the batch itself by default) on ``miner``'s indices (every pair
    without one); ``self_index``: where the reference set holds each sample's own copy (a memory), no pair of it."""
    if ref_emb is None:
        if miner is None:
            return loss(embeddings, labels)
        return loss(embeddings, labels, miner(embeddings, labels))
    own_loss = isinstance(loss, MetricLoss)
    if miner is not None:
        from ..miners import Miner

        if isinstance(miner, Miner):
            indices = miner(embeddings, labels, ref_emb, ref_labels, self_index=self_index)
        else:  # PML's miners know nothing of the copy: its pairs are removed afterwards, as PML's wrapper does
            indices = drop_self_pairs(miner(embeddings, labels, ref_emb, ref_labels), self_index)
    elif own_loss or self_index is None:
        indices = None  # every pair (deepmetric's losses exclude the copy themselves)
    else:
        indices = drop_self_pairs(all_pairs(labels, ref_labels), self_index)
    if own_loss:
        return loss(embeddings, labels, indices, ref_emb, ref_labels, self_index=self_index)
    return loss(embeddings, labels, indices, ref_emb, ref_labels)


def pair_loss(loss: nn.Module, miner: nn.Module | None, embeddings: torch.Tensor, labels: torch.Tensor,
              memory: CrossBatchMemory | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """``(total, parts)``: ``loss`` with ``miner`` on the batch, and with ``memory`` (once its warm-up is over)
    ``batch_weight · ℓ(B, B) + weight · ℓ(B, M)``; ``parts`` (detached, for the log) are ``batch`` and ``memory``
    when there is a memory, else empty. Without a memory this is exactly ``loss(x, y, miner(x, y))``."""
    if memory is None:
        return mined_loss(loss, miner, embeddings, labels), {}
    if not memory.active:
        batch = mined_loss(loss, miner, embeddings, labels)
        return batch, {"batch": batch.detach(), "memory": torch.zeros_like(batch.detach())}
    parts = {}
    total = None
    if memory.batch_weight:
        batch = mined_loss(loss, miner, embeddings, labels)
        parts["batch"] = batch.detach()
        total = memory.batch_weight * batch
    ref_emb, ref_labels, self_index = memory.references(embeddings, labels)
    against = mined_loss(loss, miner, embeddings, labels, ref_emb, ref_labels, self_index)
    parts["memory"] = against.detach()
    total = memory.weight * against if total is None else total + memory.weight * against
    return total, parts


# ------------------------------------------------------------------------------------------------- validation
def takes_reference_set(loss_class: type) -> bool:
    """Whether a loss compares samples with a reference set of other samples (a memory can extend it): deepmetric's
    own pair losses, and the PML losses PML's ``CrossBatchMemory`` supports. Proxy and classification losses
    compare with their own parameters instead."""
    if isinstance(loss_class, type) and issubclass(loss_class, MetricLoss):
        return True
    from pytorch_metric_learning.losses import CrossBatchMemory as PMLMemory

    module = getattr(loss_class, "__module__", "") or ""
    return module.startswith("pytorch_metric_learning.") and loss_class.__name__ in PMLMemory.supported_losses()


def check_memory_loss(loss_name: str, memory_key: str, loss_key: str = "loss.name") -> None:
    """A `ValueError` naming both keys when ``loss_name`` is no loss a memory can serve."""
    from ..registry import resolve

    cls = resolve("loss", loss_name)
    if not takes_reference_set(cls):
        raise ValueError(
            f"{memory_key}.size: {loss_key}={loss_name!r} ({cls.__name__}) is not a pair-based loss, so a cross-batch "
            "memory has nothing to add to it (a proxy or classification loss compares each sample with its own "
            "learnt proxies or class weights, not with other samples); use a pair loss (contrastive, "
            f"multi_similarity, triplet_margin, margin, ntxent, or deepmetric's ccp_c1 / ccp_c2 / ccp_ms / "
            f"ccp_triplet), or set {memory_key}.size=0"
        )

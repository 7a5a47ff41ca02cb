"""`ClassBalancedBatchSampler`: batches of P classes × M samples that visit every sample once per epoch.

One epoch (deterministic from ``(seed, epoch)``):

1. each class's items are shuffled and cut into groups of M; a last partial group is topped up with other items
   of the same class (a class smaller than M is topped up with replacement, or dropped with
   ``small_classes="drop"``);
2. batches are formed from P groups of P distinct classes, always taking the classes with the most groups left
   (ties broken at random), which forms the largest possible number of full batches;
3. the batch order is shuffled.

So every item is in exactly one group, and every group is used except (a) at most P − 1 groups left over when
fewer than P classes still have groups, and (b) groups of a class so large that it would need to appear twice
in a batch. The epoch length is ``len(sampler)`` batches, the same every epoch (it depends only on class sizes).

Resuming: ``set_epoch(epoch, start_batch=b)`` continues an epoch at batch b. Sharding: with ``world_size`` W,
rank r receives items ``[r·PM/W, (r+1)·PM/W)`` of every global batch, so the ranks' parts are disjoint and
together are exactly the single-process batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

SMALL_CLASS_POLICIES = ("topup", "drop")


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset positions (this rank's part of each P × M batch).

    Args:
        labels: class label of every dataset position (length N).
        classes_per_batch: P. samples_per_class: M. seed: drives every random choice (with the epoch).
        small_classes: ``topup`` (classes with fewer than M items are sampled with replacement) or ``drop``.
        rank, world_size: this process's shard of each global batch.
    """

    def __init__(
        self,
        labels,
        classes_per_batch: int,
        samples_per_class: int,
        *,
        seed: int = 0,
        small_classes: str = "topup",
        rank: int = 0,
        world_size: int = 1,
    ):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(
                f"classes_per_batch and samples_per_class must be ≥ 1, got {classes_per_batch} and {samples_per_class}"
            )
        if small_classes not in SMALL_CLASS_POLICIES:
            raise ValueError(f"small_classes must be one of {SMALL_CLASS_POLICIES}, got {small_classes!r}")
        batch = classes_per_batch * samples_per_class
        if not 0 <= rank < world_size or batch % world_size:
            raise ValueError(
                f"a batch of {classes_per_batch} × {samples_per_class} = {batch} cannot be split evenly over "
                f"world_size={world_size} (rank {rank}); choose P × M divisible by the number of processes"
            )
        self.P, self.M = classes_per_batch, samples_per_class
        self.seed, self.rank, self.world_size = seed, rank, world_size
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(counts)[:-1])
        keep = counts >= (samples_per_class if small_classes == "drop" else 1)
        self.dropped_classes = classes[~keep].tolist()
        self.classes = classes[keep]
        self.members = [m for m, k in zip(members, keep, strict=True) if k]
        if len(self.classes) < classes_per_batch:
            need = f"at least {samples_per_class} items" if small_classes == "drop" else "items"
            raise ValueError(
                f"P × M = {classes_per_batch} × {samples_per_class} needs {classes_per_batch} classes with {need}, "
                f"but the data has {len(self.classes)} such classes (of {len(classes)}); lower classes_per_batch"
                + (" or use small_classes='topup'" if small_classes == "drop" else "")
            )
        small = int((counts[keep] < samples_per_class).sum())
        if small:
            warnings.warn(
                f"{small} class(es) have fewer than M={samples_per_class} items and are topped up with repeats",
                stacklevel=2,
            )
        self.groups_per_class = np.array([-(-len(m) // samples_per_class) for m in self.members])
        self.num_batches = _count_batches(self.groups_per_class, classes_per_batch)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate, starting at batch ``start_batch`` (to resume mid-epoch)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def plan(self, epoch: int) -> np.ndarray:
        """All global batches of ``epoch``: an array (batches × P·M) of dataset positions, class-grouped."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        groups = [self._groups(m, rng) for m in self.members]  # per class: (g_c × M)
        remaining = self.groups_per_class.copy()
        taken = np.zeros_like(remaining)
        batches = np.empty((self.num_batches, self.P * self.M), dtype=np.int64)
        for b in range(self.num_batches):
            key = remaining + rng.random(len(remaining)) * 0.5  # most groups left first, random among ties
            chosen = np.argpartition(-key, self.P - 1)[: self.P]
            chosen = chosen[rng.permutation(self.P)]
            batches[b] = np.concatenate([groups[c][taken[c]] for c in chosen])
            taken[chosen] += 1
            remaining[chosen] -= 1
        return batches[rng.permutation(self.num_batches)]

    def _groups(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        shuffled = rng.permutation(members)
        n, M = len(shuffled), self.M
        short = (-n) % M
        if short:
            if n >= M:  # top up the last group with other items of the class, without repeats inside the group
                last_start = n - n % M
                fill = rng.choice(shuffled[:last_start], size=short, replace=False)
            else:
                fill = rng.choice(shuffled, size=short, replace=True)
            shuffled = np.concatenate([shuffled, fill])
        return shuffled.reshape(-1, M)

    def __iter__(self):
        batches = self.plan(self.epoch)
        per_rank = self.P * self.M // self.world_size
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        for b in range(self.start_batch, self.num_batches):
            yield batches[b, lo:hi].tolist()


def _count_batches(groups_per_class: np.ndarray, P: int) -> int:
    """Full batches formed by always taking the P classes with the most groups left (the maximum possible)."""
    remaining = np.sort(groups_per_class)[::-1].copy()
    batches = 0
    while len(remaining) >= P and remaining[P - 1] > 0:
        # take as many rounds at once as keep the top-P set's order intact
        gap = remaining[P - 1] - (remaining[P] if len(remaining) > P else 0)
        rounds = max(1, int(gap))
        remaining[:P] -= rounds
        batches += rounds
        remaining = np.sort(remaining[remaining > 0])[::-1].copy()
    return batches

"""Multi-process training with ``torchrun`` (docs/distributed.md).

Semantics: every rank holds a slice of each global P × M batch. Losses and miners see the **global** batch:
`gather_for_loss` all-gathers the embeddings, keeps the gradient of this rank's own slice and detaches the others,
and scales the kept slice's gradient by the world size W. DistributedDataParallel averages gradients over ranks, so
the network receives (1/W) Σ_r W · ∂L/∂θ|_r = ∂L/∂θ, the single-process gradient on the global batch; parameters
used directly by the loss (proxies, learnable margins, regressors) get the full ∂L/∂φ on every rank and their
average is that same value. BatchNorm in training mode normalises over the global batch (`GlobalBatchNorm`, which
works with gloo on CPU, where torch's SyncBatchNorm does not). With these, N processes train the same model as one.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function is the single-process identity.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


def requested() -> bool:
    """Launched by torchrun (or by hand) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_*``):
    NCCL on GPUs (one per local rank), gloo on CPU. Returns this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if wants_cuda else "gloo"
        if wants_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if wants_cuda:
        return torch.device("cuda", local if size > 1 else torch.cuda.current_device())
    return torch.device("cpu")


def teardown() -> None:
    """Leave the process group together: every rank waits for the others (rank 0 may still be writing the report)
    before destroying it, since a rank that exits while another still uses gloo's connections can abort.

    First the garbage left by training is collected: the DistributedDataParallel wrapper (which holds the process
    group and its gloo work) outlives ``train()`` in reference cycles, and when the interpreter's finalisation frees
    it instead, gloo's threads release tensors without a live interpreter and the process aborts ("terminate called
    without an active exception", SIGABRT, seen on one rank of a CI run)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def gather_for_loss(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (equal sizes) concatenated in rank order; this rank's slice keeps its gradient × W."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    from .losses.gradient_reversal import scale_gradient

    parts[rank()] = scale_gradient(x, float(world_size()))
    return torch.cat(parts)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (equal sizes: a training batch's rows) concatenated in rank order, without gradient; one
    all-gather and no host synchronisation."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, without gradient; sizes along dim 0 may differ (evaluation)."""
    if not active():
        return x
    x = x.contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (pickled)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s value."""
    if active():
        dist.broadcast(tensor, src=src)
    return tensor


def shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` items (rank order = item order)."""
    r, w = rank(), world_size()
    return slice(n * r // w, n * (r + 1) // w)


class _AllReduceSum(torch.autograd.Function):
    """Σ over ranks, whose gradient is again the Σ over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks (any backend).

    Per channel the ranks all-reduce (Σx, Σx², n) with an autograd-aware all-reduce, so the gradient also flows
    through the global mean and variance exactly as in one process; running statistics use the unbiased global
    variance, as ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), x.pow(2).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
                self.num_batches_tracked += 1
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm for every BatchNorm2d: torch's SyncBatchNorm on CUDA, `GlobalBatchNorm` elsewhere.
    Layers kept in eval mode (frozen BatchNorm) behave as before either way."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)  # fmt: skip
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.requires_grad_(any(p.requires_grad for p in child.parameters()))
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel. Every rank computes the same buffers (global-batch BatchNorm, queues),
    so buffers are not broadcast at each forward."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    try:
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
    except TypeError:  # torch versions before forward_sync_buffers
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

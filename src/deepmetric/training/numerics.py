"""Numerical health of a run: non-finite (or overflowing) losses, gradients and weights stop it before a checkpoint
could hold them, or ``train.skip_nonfinite_steps`` skips a bounded number of steps.

On the CPU the loss, the gradients and the weights are checked every step (free). On a GPU reading them every step
would make each step wait for the device, so the first step whose loss was not finite is remembered on the device and
read, with the weights, at log and checkpoint steps. Skipping needs the answer before the update: it checks every step
on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import RunError


class NonFiniteLossError(RunError):
    """A loss, gradient or weight became NaN, Inf or too large to square; the last good checkpoint is kept."""


def first_bad(named) -> tuple[str, float, torch.dtype] | None:
    """The first of ``(name, tensor)`` holding a NaN, an Inf or a value whose square overflows its dtype (|x| >
    √max, 1.8e19 in float32: norms, variances and Adam's second moment turn it into Inf; lr = 1e6 drives BatchNorm's
    running variance there long before an Inf appears), as (name, its largest |value|, dtype); None when all are
    sound. One host sync for all tensors."""
    items = [(n, t.detach()) for n, t in named if t is not None and t.is_floating_point() and t.numel()]
    if not items:
        return None
    peaks = [t.abs().amax() for _, t in items]  # NaN propagates through amax
    ok = torch.stack([p <= math.sqrt(torch.finfo(t.dtype).max) for p, (_, t) in zip(peaks, items, strict=True)])
    if bool(ok.all()):
        return None
    i = int((~ok).nonzero()[0])
    return items[i][0], float(peaks[i]), items[i][1].dtype


def describe_bad(name: str, peak: float, dtype: torch.dtype) -> str:
    """``name holds nan`` or ``name reaches 3e+20, beyond 1.8e+19 where its square overflows float32``."""
    if not math.isfinite(peak):
        return f"{name} holds {peak}"
    limit = math.sqrt(torch.finfo(dtype).max)
    return f"{name} reaches {peak:.3g}, beyond {limit:.2g} where its square overflows {str(dtype).split('.')[-1]}"


def described(parts: dict) -> str:
    """A step's loss parts as ``loss=nan, dance=0.1``."""
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())


class NumericGuard:
    """The checks of one run. ``last_checkpoint()`` gives the newest intact checkpoint and its step (or None), named
    in every error; ``amp``: the gradient scaler skips steps with Inf gradients itself, so only the loss counts."""

    def __init__(self, device: torch.device, skip_limit: int, amp: bool, run_dir: Path,
                 last_checkpoint: Callable[[], tuple[Path, int] | None]):  # fmt: skip
        self.skip_limit, self.amp, self.run_dir = skip_limit, amp, run_dir
        self.last_checkpoint = last_checkpoint
        self.every_step = device.type == "cpu" or skip_limit > 0
        self.skipped_steps: list[int] = []
        self._bad_loss_step = torch.zeros((), dtype=torch.long, device=device)
        self._weights_checked = 0  # the last step whose weights were found sound

    def error(self, what: str, skippable: bool = True) -> NonFiniteLossError:
        """The error to raise: ``what``, the checkpoint kept, and how to go on."""
        saved = self.last_checkpoint()
        if saved is not None and saved[0].is_file():
            kept = f"the last good checkpoint ({saved[0]}, step {saved[1]}) is kept"
        else:
            kept = "no checkpoint had been written"
        hint = "Lower optim.lr or set optim.grad_clip_norm" + (
            f", or skip up to N such steps with train.skip_nonfinite_steps=N (also on --resume {self.run_dir})"
            if skippable else "")  # fmt: skip
        return NonFiniteLossError(f"{what}; the run stopped and {kept}. {hint}.")

    def watch_loss(self, parts: dict, step: int) -> None:
        """Before backward of step ``step``: on a GPU remember the first bad step on the device; on the CPU, without
        skipping, stop at once."""
        loss = parts["loss"].detach()
        if not self.every_step:
            bad = ~torch.isfinite(loss) & (self._bad_loss_step == 0)
            self._bad_loss_step = torch.where(bad, step, self._bad_loss_step)
        elif not self.skip_limit and not math.isfinite(float(loss)):
            raise self.error(f"non-finite loss at step {step} ({described(parts)})")

    def step_problem(self, parts: dict, named_parameters, step: int) -> str | None:
        """After backward: what is wrong with step ``step``'s loss or gradients (None: nothing)."""
        if not math.isfinite(float(parts["loss"].detach())):
            return f"non-finite loss at step {step} ({described(parts)})"
        if not self.amp:
            bad = first_bad((name, p.grad) for name, p in named_parameters)
            if bad is not None:
                return f"non-finite gradient at step {step}: {describe_bad(*bad)}"
        return None

    def skip(self, problem: str, step: int) -> None:
        """Count a skipped step; stop once more steps than ``train.skip_nonfinite_steps`` were skipped."""
        self.skipped_steps.append(step)
        if len(self.skipped_steps) > self.skip_limit:
            raise self.error(
                f"{problem}: more than train.skip_nonfinite_steps={self.skip_limit} non-finite steps (skipped: "
                f"{self.skipped_steps[:-1]})", skippable=False,
            )  # fmt: skip

    def check_on_device(self) -> None:
        """(GPU, at log and checkpoint steps) the first step whose loss was not finite, remembered on the device."""
        if not self.every_step:
            bad_step = int(self._bad_loss_step)
            if bad_step:
                raise self.error(f"non-finite loss at step {bad_step}")

    def check_logged(self, values: dict[str, float], parts: dict, step: int) -> None:
        """At a log step: the logged values (read anyway) are finite unless the step was skipped."""
        skipped = bool(self.skipped_steps) and self.skipped_steps[-1] == step
        if not skipped and not all(math.isfinite(v) for v in values.values()):
            raise self.error(f"non-finite loss at step {step} ({described(parts)})")

    def check_weights(self, named, step: int, device_type: str) -> None:
        """Stop before a checkpoint (or another step) could hold a NaN, an Inf or an overflowing weight."""
        bad = first_bad(named)
        if bad is not None:
            where = ""
            if not self.every_step:  # found at a log or checkpoint step: it went wrong since the last check
                where = f" (checked at log/checkpoint steps on {device_type}: sound at {self._weights_checked})"
            raise self.error(f"non-finite weight after step {step}: {describe_bad(*bad)}{where}", skippable=False)
        self._weights_checked = step

"""Learning-rate schedules with linear warm-up: none, step, multistep, cosine, plateau (each registered in
``SCHEDULES`` at its definition).

lr(step) = base_lr(group) · warmup(step) · decay(step) · plateau_multiplier, where cosine decays from 1 to
``min_lr / base_lr`` over the steps after warm-up. A plain ``state_dict`` lets a resumed run continue exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from ..config import ScheduleConfig

SCHEDULES = Registry("schedule")  # name → decay(cfg, step, base_lr, total_steps) → multiplier of the base lr


@SCHEDULES.register("none")
def constant(cfg: ScheduleConfig, step: int, base_lr: float, total_steps: int) -> float:
    return 1.0


@SCHEDULES.register("step")
def step_decay(cfg: ScheduleConfig, step: int, base_lr: float, total_steps: int) -> float:
    return cfg.gamma ** (step // cfg.step_size)


@SCHEDULES.register("multistep")
def multistep(cfg: ScheduleConfig, step: int, base_lr: float, total_steps: int) -> float:
    return cfg.gamma ** sum(step >= m for m in cfg.milestones)


@SCHEDULES.register("cosine")
def cosine(cfg: ScheduleConfig, step: int, base_lr: float, total_steps: int) -> float:
    t = min(1.0, max(0, step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = min(1.0, cfg.min_lr / base_lr) if base_lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("plateau")
def plateau(cfg: ScheduleConfig, step: int, base_lr: float, total_steps: int) -> float:
    """1 per step: `LRSchedule.on_validation` decays the rate after evaluations without improvement."""
    return 1.0


class LRSchedule:
    """The schedule ``cfg.name`` names (see ``SCHEDULES``; an unknown name is an error) over ``optimizer``'s groups."""

    def __init__(self, cfg: ScheduleConfig, optimizer, total_steps: int):
        self.decay = SCHEDULES.get(cfg.name)
        self.cfg, self.optimizer, self.total_steps = cfg, optimizer, max(1, total_steps)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.plateau_mult, self.plateau_best, self.plateau_bad = 1.0, None, 0
        self.apply(0)

    def _decay(self, step: int, base_lr: float) -> float:
        return self.decay(self.cfg, step, base_lr, self.total_steps)

    def apply(self, step: int) -> None:
        """Set every group's learning rate for ``step`` (the step about to be taken)."""
        warm = min(1.0, (step + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * warm * self._decay(step, base) * self.plateau_mult

    def on_validation(self, value: float) -> None:
        """Plateau: multiply by ``plateau_factor`` after ``plateau_patience`` evaluations without improvement."""
        if self.cfg.name != "plateau":
            return
        if self.plateau_best is None or value > self.plateau_best:
            self.plateau_best, self.plateau_bad = value, 0
            return
        self.plateau_bad += 1
        if self.plateau_bad >= self.cfg.plateau_patience:
            self.plateau_mult *= self.cfg.plateau_factor
            self.plateau_bad = 0

    def state_dict(self) -> dict:
        return {"plateau_mult": self.plateau_mult, "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_mult = state["plateau_mult"]
        self.plateau_best = state["plateau_best"]
        self.plateau_bad = state["plateau_bad"]

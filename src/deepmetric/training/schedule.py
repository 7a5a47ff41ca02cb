"""Learning-rate schedules with linear warm-up: none, step, multistep, cosine, plateau.

lr(step) = base_lr(group) · warmup(step) · decay(step) · plateau_multiplier, where cosine decays from 1 to
``min_lr / base_lr`` over the steps after warm-up. A plain ``state_dict`` lets a resumed run continue exactly.
"""

from __future__ import annotations

import math

from ..config import ScheduleConfig


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, optimizer, total_steps: int):
        self.cfg, self.optimizer, self.total_steps = cfg, optimizer, max(1, total_steps)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.plateau_mult, self.plateau_best, self.plateau_bad = 1.0, None, 0
        self.apply(0)

    def _decay(self, step: int, base_lr: float) -> float:
        c = self.cfg
        if c.name == "step":
            return c.gamma ** (step // c.step_size)
        if c.name == "multistep":
            return c.gamma ** sum(step >= m for m in c.milestones)
        if c.name == "cosine":
            t = min(1.0, max(0, step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps))
            floor = min(1.0, c.min_lr / base_lr) if base_lr > 0 else 0.0
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

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

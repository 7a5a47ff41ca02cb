"""Optimizers by name (``optim.name``): each registers in ``OPTIMIZERS`` at its definition.

A builder takes the ``optim`` config and the parameter groups (each may carry its own ``lr`` and ``weight_decay``)
and returns the torch optimizer; ``betas`` apply to adam / adamw, ``momentum`` to sgd / rmsprop.
"""

from __future__ import annotations

import torch

from ..registry import Registry

OPTIMIZERS = Registry("optimizer")  # name → builder(cfg, groups) → torch.optim.Optimizer


@OPTIMIZERS.register("adam")
def adam(cfg, groups) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(cfg, groups) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(cfg, groups) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(cfg, groups) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_optimizer(cfg, groups) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` names over ``groups``; an unknown name is an error naming the closest valid ones."""
    return OPTIMIZERS.get(cfg.name)(cfg, groups)

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


def clip_gradients(cfg, parameters, unscale) -> None:
    """``optim.grad_clip_norm`` (of all gradients together) then ``optim.grad_clip_value`` (each entry), after
    ``unscale()`` (AMP's gradient scaler: clip the true gradients); nothing when neither is set."""
    if not (cfg.grad_clip_norm or cfg.grad_clip_value):
        return
    unscale()
    parameters = list(parameters)
    if cfg.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip_norm)
    if cfg.grad_clip_value:
        torch.nn.utils.clip_grad_value_(parameters, cfg.grad_clip_value)

"""Gradient reversal (Ganin & Lempitsky 2015): identity forward, gradient multiplied by −λ backward.

DiVA's adversarial decorrelation puts it between a head's embedding and the regressor that predicts another head
from it, so one optimizer step makes the regressor better and the encoder worse at that prediction.
"""

from __future__ import annotations

import torch


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.scale * grad, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient × ``scale`` backward (also the distributed gather's × world size)."""
    return _ScaleGradient.apply(x, scale)


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale_gradient(x, -scale)


class GradientReversal(torch.nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.scale)

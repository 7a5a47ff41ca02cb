"""Geometry of the unit hypersphere shared by the distance-weighted miners and DaNCE's negative weights."""

from __future__ import annotations

import torch


def log_inverse_sphere_density(d: torch.Tensor, dim: int) -> torch.Tensor:
    """log 1/q(d), up to a constant: q(d) ∝ d^(D−2) (1 − d²/4)^((D−3)/2) is the density of the distance d between
    two points drawn uniformly on the unit sphere S^(D−1) (Wu et al. 2017, eq. 3).

    ``d`` comes clipped by the caller (a lower cut-off keeps 1/q finite near 0); (1 − d²/4) is floored at 1e-8 so
    that d = 2 stays finite. Distance-weighted sampling draws ∝ 1/q(d) = exp(this) (Wu et al. 2017, eq. 4, without
    its cap λ).
    """
    return (2 - dim) * d.log() - ((dim - 3) / 2) * (1 - d.pow(2) / 4).clamp_min(1e-8).log()

"""Floating-point precision of training.

``train.dtype: float32`` (the default; ``train.amp`` adds CUDA mixed precision, with the loss math in float32) or
``float64``, for numerical checks where float32 rounding would be amplified (the distributed equivalence test:
Adam turns rounding noise in near-zero gradients into learning-rate-sized steps, and a miner's choice can flip on it).
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: half-precision outputs of autocast are upcast, float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

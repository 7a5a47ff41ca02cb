"""Validation and conversion of evaluation inputs (embeddings and labels).

Every public evaluation function funnels its arguments through here, so bad input fails early with a
`ValueError` that names the argument and says what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def as_embeddings(x, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Return `x` as a 2-D floating tensor (N × D) on `device`, checking shape and finiteness."""
    if x is None:
        raise ValueError(f"{name} is None; expected an N × D array of embeddings")
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not t.is_floating_point():
        t = t.float()
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N × D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 dimensions per row")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if device is not None:
        t = t.to(device)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad_rows = (~finite).any(dim=1).nonzero().flatten()
        shown = bad_rows[:5].tolist()
        raise ValueError(
            f"{name} contains NaN or Inf in {bad_rows.numel()} row(s) (first: {shown}); "
            "check the model for diverged training or the data for corrupt inputs"
        )
    return t


def as_labels(y, name: str, length: int | None = None) -> torch.Tensor:
    """Return integer labels as a 1-D int64 CPU tensor; never casts through float.

    Accepts torch tensors, numpy arrays and Python sequences of integers of any magnitude. String labels are
    rejected with a pointer to `encode_labels`.
    """
    if y is None:
        raise ValueError(f"{name} is None; expected a 1-D array of integer labels")
    if isinstance(y, torch.Tensor):
        t = y.detach().cpu()
        if t.dtype == torch.bool or t.dtype not in _INTEGER_DTYPES:
            raise ValueError(
                f"{name} must hold integers, got dtype {t.dtype}; float labels lose exactness above 2**24. "
                "Convert with deepmetric.evaluation.encode_labels"
            )
        t = t.to(torch.int64)
    else:
        a = np.asarray(y)
        if a.dtype.kind in "USO":
            raise ValueError(
                f"{name} holds {a.dtype} values (e.g. {a.ravel()[:1].tolist()}); map them to integers first "
                "with deepmetric.evaluation.encode_labels(query_labels, reference_labels)"
            )
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers, got dtype {a.dtype}; use encode_labels to map other values")
        if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} has uint64 values above the int64 range")
        t = torch.from_numpy(a.astype(np.int64, copy=False))
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name} has {t.numel()} entries but the embeddings have {length} rows")
    return t.contiguous()


def encode_labels(*label_arrays: Sequence) -> tuple[list[torch.Tensor], list]:
    """Map arbitrary hashable labels (strings, tuples, ints) to int64 codes shared across all arrays.

    Returns `(codes, classes)` where `codes[i]` is an int64 tensor for `label_arrays[i]` and `classes[c]` is
    the original label of code `c` (sorted when the labels are mutually comparable, else first-seen order).
    """
    if not label_arrays:
        raise ValueError("encode_labels needs at least one label array")
    flat = [list(np.asarray(a, dtype=object).ravel()) for a in label_arrays]
    seen: dict = {}
    for values in flat:
        for v in values:
            seen.setdefault(v, None)
    try:
        classes = sorted(seen)
    except TypeError:
        classes = list(seen)
    index = {c: i for i, c in enumerate(classes)}
    codes = [torch.tensor([index[v] for v in values], dtype=torch.int64) for values in flat]
    return codes, classes

"""Strict loading of a local state-dict file into a module, with errors that name the file and the mismatch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def load_weights(module: nn.Module, path: str | Path, state: dict | None = None) -> None:
    """Load a state dict from a local file into ``module``, strictly.

    Accepts a bare state dict or a checkpoint holding one under ``state_dict`` or ``model``; strips a leading
    ``module.`` (DataParallel) prefix. Any missing, unexpected or mis-shaped key is an error naming the file.
    ``state``: the file's state dict, already read (and renamed) by the caller.
    """
    path = Path(path)
    if state is None:
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read backbone weights {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ValueError(
            f"backbone weights {path} do not fit the model: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:3]}"
        )
    module.load_state_dict(state)

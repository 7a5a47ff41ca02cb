"""Checkpoints and other run files, written atomically and durably (`deepmetric.integrity`); checkpoints carry a
sha256 beside them (``NAME.pt.sha256``), checked on every load."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import RunError
from ..integrity import (
    IntegrityError,
    atomic_write_bytes,
    hash_path,
    move_with_hash,
    verify_hash,
    write_with_hash,
)


def save_checkpoint(state: dict, path: str | Path, previous: str | Path | None = None) -> None:
    """``state`` into ``path`` with its hash; with ``previous``, the file it replaces is kept there first (so a
    corrupt newest checkpoint leaves an intact one)."""
    path = Path(path)
    if previous is not None and path.is_file():
        move_with_hash(path, previous)
    write_with_hash(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint, after checking it against its recorded hash (`IntegrityError`, a `RunError`, naming the file
    when it does not match or cannot be read; a checkpoint written before hashes loads with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if verify_hash(path, required=False) is None:
        warnings.warn(f"{path} has no recorded hash ({hash_path(path).name}): loaded unchecked", stacklevel=2)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise IntegrityError(f"cannot read checkpoint {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from e


def write_json(path: str | Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=float).encode()
    atomic_write_bytes(path, lambda f: f.write(text))


def write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> dict:
    """A JSON file a run wrote (``metrics.json``); a `FileNotFoundError` / `RunError` naming the file when it is
    missing / garbled."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: the run has not finished (resume it with --resume)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}; restore it, or train the run again") from None


def read_records(path: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl``. A last line cut short (a kill mid-write) is left out with a warning
    (``--resume`` repairs the file); a garbled line before it is a `RunError` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: its last line is cut short (left out): {e}", stacklevel=2)
                break
            raise RunError(f"{path}, line {number}: not a JSON record ({e}); delete that line or restore the "
                           "file") from None  # fmt: skip
    return records


def rng_state() -> dict:
    """Every RNG the run draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (user code may draw from the global RNG)
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)

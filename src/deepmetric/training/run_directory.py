"""A run's directory: whether it may be written (resume / overwrite), what ``--overwrite`` deletes, the config, and
the checkpoints with their recovery.

Layout: ``config.yaml``, ``log.jsonl``, ``metrics.json``, ``report.html``, ``checkpoints/last.pt`` (and the one before
it, ``last.prev.pt``), ``checkpoints/best.pt``, each checkpoint with its ``.sha256`` (`deepmetric.integrity`).
Resume reads ``last.pt``; when it is garbled, ``last.prev.pt`` with a warning (the bad file is kept aside as
``last.corrupt.pt``, so the next checkpoint cannot make it ``last.prev.pt``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..config import Config, load_config, to_yaml
from ..errors import ConfigError
from ..integrity import IntegrityError, remove_file_with_hash, remove_stale_tmp
from .checkpoint import load_checkpoint, save_checkpoint, write_text
from .resume import resume_changes

# what a run writes into its directory: --overwrite deletes these (and nothing else there)
RUN_OUTPUTS = ("config.yaml", "log.jsonl", "metrics.json", "report.html", "mlflow_run_id", "checkpoints", "report",
               "tensorboard")  # fmt: skip


class RunExistsError(ConfigError, FileExistsError):
    """The run directory already holds a run (neither resume nor overwrite was asked for)."""


class RunDirectory:
    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        """Check that a run may be written to ``path``: a new directory, ``resume`` of the run there, or ``overwrite``
        (its run deleted by `clear`); `RunExistsError` when it holds a run and neither was asked for."""
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        if resume and overwrite:
            raise ConfigError(f"resume and overwrite exclude each other ({self.path}): choose one")
        self.holds_run = any((self.path / name).exists() for name in ("log.jsonl", "metrics.json", "checkpoints"))
        if not resume and self.holds_run and not overwrite:
            raise RunExistsError(
                f"run directory {self.path} already holds a run: continue it with --resume {self.path}, start "
                "it again from scratch with --overwrite (deletes its files), or choose another --output"
            )

    def resume_changes(self, cfg: Config) -> list[tuple[str, object, object]]:
        """The keys in which ``cfg`` differs from the run's ``config.yaml``; a `ConfigError` for one not safe."""
        saved = self.path / "config.yaml"
        return resume_changes(load_config(saved), cfg, self.path) if saved.is_file() else []

    def clear(self, say: Callable[[str], None]) -> None:
        """--overwrite: delete what a run wrote here (`RUN_OUTPUTS`), nothing else."""
        for name in RUN_OUTPUTS:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        remove_stale_tmp(self.path)
        say(f"--overwrite: removed the previous run in {self.path}")

    def remove_stale(self, say: Callable[[str], None]) -> None:
        """The ``.tmp`` files an interrupted process left (resume)."""
        stale = remove_stale_tmp(self.path) + remove_stale_tmp(self.checkpoints)
        if stale:
            say(f"removed {len(stale)} temporary file(s) left by an interrupted process")

    def write_config(self, cfg: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", to_yaml(cfg))

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def save_last(self, state: dict) -> None:
        """``last.pt``, keeping the one it replaces as ``last.prev.pt``."""
        save_checkpoint(state, self.last, previous=self.checkpoints / "last.prev.pt")

    def save_best(self, state: dict) -> None:
        save_checkpoint(state, self.best)

    def load_last(self, warn: Callable[[str], None], main: bool) -> tuple[dict, Path] | None:
        """The newest intact checkpoint: ``last.pt``, else (with a warning) ``last.prev.pt``; None when there is
        none; `IntegrityError` when neither is intact."""
        problems = []
        for path in (self.last, self.checkpoints / "last.prev.pt"):
            if not path.is_file():
                problems.append(f"{path} missing")
                continue
            try:
                state = load_checkpoint(path)
            except IntegrityError as e:
                problems.append(str(e))
                continue
            if path != self.last:
                warn(f"{problems[0]}; resuming from the previous checkpoint {path} (step {state['step']})")
                if main and self.last.is_file():  # kept aside: the next checkpoint must not make it last.prev.pt
                    os.replace(self.last, self.checkpoints / "last.corrupt.pt")
                    remove_file_with_hash(self.last)
            return state, path
        if all(p.endswith(" missing") for p in problems):
            return None
        raise IntegrityError(
            f"no intact checkpoint to resume {self.path} from: {'; '.join(problems)}; start it again with --overwrite"
        )

"""Python API: ``deepmetric.train`` runs exactly what ``deepmetric train`` runs; `load_run` reads a finished run."""

from __future__ import annotations

import time
from pathlib import Path

from .config import Config, load_config, parse_overrides
from .run import LoadedRun, load_run


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    config: str | Path | Config | None = None,
    overrides: list[str] | dict | None = None,
    *,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    **keyword_overrides,
) -> tuple[Path, dict]:
    """Train from a YAML path (or a `Config`) with overrides: ``["train.epochs=3", ...]``, a dict of dotted keys, or
    keyword arguments with ``__`` for dots (``train__epochs=3``). Returns ``(run_dir, metrics)``;
    ``resume=RUN_DIR`` continues an interrupted run."""
    from .training import Trainer

    dotted = parse_overrides(overrides, **keyword_overrides)
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_config(run_dir / "config.yaml", dotted)
    else:
        cfg = config if isinstance(config, Config) else load_config(config, dotted)
        run_dir = Path(output) if output else default_run_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=resume is not None, quiet=quiet)
    metrics = trainer.fit()
    return run_dir, metrics


__all__ = ["LoadedRun", "default_run_dir", "load_run", "train"]

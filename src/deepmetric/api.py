"""Python API: ``deepmetric.train`` runs exactly what ``deepmetric train`` runs; `load_run` reads a finished run."""

from __future__ import annotations

import time
from pathlib import Path

from .config import Config, load_config, parse_overrides
from .errors import ConfigError
from .run import LoadedRun, load_run


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    config: str | Path | Config | None = None,
    overrides: list[str] | dict | None = None,
    *,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    **keyword_overrides,
) -> tuple[Path, dict]:
    """Train from a YAML path (or a `Config`) with overrides: ``["train.epochs=3", ...]``, a dict of dotted keys, or
    keyword arguments with ``__`` for dots (``train__epochs=3``). Returns ``(run_dir, metrics)``.

    ``resume=RUN_DIR`` continues an interrupted (or finished) run from its last checkpoint with its own
    ``config.yaml``; overrides may change only the keys `deepmetric.training.resume.RESUME_SAFE` lists (the step
    budget, intervals, device, …), any other is a `ConfigError` naming it. ``overwrite=True`` deletes the run already
    in ``output`` (its files only) and trains anew."""
    from .training import Trainer
    from .training.resume import check_resume_overrides

    dotted = parse_overrides(overrides, **keyword_overrides)
    if resume is not None:
        run_dir = Path(resume)
        if config is not None:
            raise ConfigError(
                f"a config ({config}) cannot be given with --resume {run_dir}: the run continues with its own "
                "config.yaml; give the keys to change as KEY=VALUE (those safe on resume, see docs/training.md)"
            )
        if output is not None and Path(output) != run_dir:
            raise ConfigError(f"--output {output} differs from --resume {run_dir}: a resumed run stays where it is")
        if overwrite:
            raise ConfigError(f"--overwrite and --resume {run_dir} exclude each other: choose one")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} is not a run directory (no config.yaml): nothing to resume")
        check_resume_overrides(dotted, run_dir)
        cfg = load_config(run_dir / "config.yaml", dotted)
    else:
        cfg = config if isinstance(config, Config) else load_config(config, dotted)
        run_dir = Path(output) if output else default_run_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=resume is not None, overwrite=overwrite, quiet=quiet)
    metrics = trainer.fit()
    return run_dir, metrics


__all__ = ["LoadedRun", "default_run_dir", "load_run", "train"]

"""Python API: ``deepmetric.train`` runs exactly what ``deepmetric train`` runs."""

from __future__ import annotations

import time
from pathlib import Path

from .config import Config, load_config


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    config: str | Path | Config | None = None,
    *,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    **overrides,
) -> tuple[Path, dict]:
    """Train from a YAML path (or a `Config`), with dotted overrides given as keyword arguments using ``__`` for
    dots (``train__epochs=3``). Returns ``(run_dir, metrics)``; ``resume=RUN_DIR`` continues an interrupted run.
    """
    from .training import Trainer

    # values are parsed as YAML, as on the command line: "{a: 1}", "[0, 1]", "null", 0.5, True …
    dotted = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_config(run_dir / "config.yaml", dotted)
    else:
        cfg = config if isinstance(config, Config) else load_config(config, dotted)
        run_dir = Path(output) if output else default_run_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=resume is not None, quiet=quiet)
    metrics = trainer.fit()
    return run_dir, metrics


def load_trainer(run_dir: str | Path, checkpoint: str = "best", device: str | None = None):
    """A `Trainer` rebuilt from a run directory with the ``best`` or ``last`` weights loaded (no training)."""
    from .training import Trainer
    from .training.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    overrides = [f"train.device={device}"] if device else []
    cfg = load_config(run_dir / "config.yaml", overrides)
    trainer = Trainer(cfg, run_dir, existing=True, quiet=True)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    trainer.method.load_state_dict(load_checkpoint(path)["method"])
    return trainer

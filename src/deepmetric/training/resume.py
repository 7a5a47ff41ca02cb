"""What may change when a run is resumed: the one list of keys that do not change what the run computes.

A resumed run continues from its ``config.yaml``; an override of a key listed in `RESUME_SAFE` is applied (and
printed by the trainer), any other is refused naming the key: changing it would make the run neither the old one nor
a new one. `check_resume_overrides` checks ``KEY=VALUE`` overrides before anything is loaded; `resume_changes`
compares two configs (the trainer refuses a run whose config differs from its ``config.yaml`` in another key).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ..config import Config
from ..errors import ConfigError

# keys (or sections, ending in ".") safe to change on resume: the step budget (the learning-rate schedule follows the
# new length from the current step on), how often to validate, log and checkpoint, early stopping, where and how fast
# it runs, how many non-finite steps to skip, what the report shows
RESUME_SAFE = (
    "train.max_steps",
    "train.epochs",
    "train.eval_every_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.early_stopping_patience",
    "train.skip_nonfinite_steps",
    "train.device",
    "train.tensorboard",
    "data.workers",
    "data.eval_batch_size",
    "eval.backend",
    "eval.memory_budget",
    "report.",
)


def resume_safe(key: str) -> bool:
    return any(key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in RESUME_SAFE)


def _safe_list() -> str:
    return ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_SAFE)


def check_resume_overrides(overrides: list[str], run_dir: str | Path) -> None:
    """``KEY=VALUE`` overrides given to resume ``run_dir``: a `ConfigError` naming the first key not safe to change."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not resume_safe(key):
            raise ConfigError(
                f"{key} cannot be changed when resuming {run_dir} (it would change what the run computes); keys that "
                f"can: {_safe_list()}; to change {key}, start a new run"
            )


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_changes(saved: Config, cfg: Config, run_dir: str | Path) -> list[tuple[str, object, object]]:
    """The keys whose values differ between ``saved`` (the run's ``config.yaml``) and ``cfg``, as ``(key, old,
    new)``; a `ConfigError` naming the first that is not safe to change on resume."""
    old = _flat(OmegaConf.to_container(OmegaConf.structured(saved)))
    new = _flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    changes = [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    for key, before, after in changes:
        if not resume_safe(key):
            raise ConfigError(
                f"{key}={after!r} differs from {before!r} in {Path(run_dir) / 'config.yaml'}: it cannot change when "
                f"resuming (keys that can: {_safe_list()}); start a new run to change it"
            )
    return changes

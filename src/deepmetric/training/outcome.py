"""A finished run's outcome: ``metrics.json`` (validation of the selected checkpoint, test, what was selected, the
baseline, and what was skipped), the report, and the trackers' last word."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from .checkpoint import write_json
from .selection import Selection


def selected_checkpoint(selection: Selection, cfg: Config, step: int) -> dict:
    """Which weights the test measures: the best validation's, or (no validation) the final ones."""
    if selection.best_value is None:
        return {"split": None, "step": step, "metric": None, "value": None}
    return {"split": cfg.train.select_split, "step": selection.best_step,
            "metric": selection.key(selection.best_metrics), "value": selection.best_value}  # fmt: skip


def run_metrics(*, selection: Selection, selected: dict, test: dict, steps: int, splits, cfg: Config,
                baseline: dict | None, skipped_steps: list, bad_images: list[str]) -> dict:  # fmt: skip
    """The content of ``metrics.json``."""
    metrics = {"val": selection.best_metrics, "test": test, "selected": selected, "steps": steps,
               "protocol": splits.protocol, "splits": splits.info}  # fmt: skip
    if baseline:
        metrics["baseline"] = baseline
    if cfg.train.select_split == "test":
        metrics["warning"] = "model selected on the test split (train.select_split=test): test metrics are biased"
    if skipped_steps:
        metrics["skipped_steps"] = skipped_steps
    if bad_images:
        metrics["skipped_images"] = {"count": len(bad_images), "paths": sorted(set(bad_images))}
    return metrics


def write_outcome(run_dir: Path, metrics: dict, cfg: Config, *, run, test_embedded, log) -> None:
    """``metrics.json``, the report (from ``run``'s selected weights and the test embeddings already computed), and
    the trackers' final metrics and artifacts (rank 0 only)."""
    write_json(run_dir / "metrics.json", metrics)
    if cfg.report.enabled:
        from ..report import write_report

        write_report(run_dir, run=run, test_embedded=test_embedded)
    log.finish_tracking(metrics)

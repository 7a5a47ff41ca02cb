"""The MLRC protocol (Musgrave, Belongie, Lim, *A Metric Learning Reality Check*, ECCV 2020), for any method.

The training classes are split into ``folds`` class-disjoint folds; model k trains on the other folds and is selected
on fold k (validation every ``train.eval_every_steps``). On the test split the report gives (i) the mean ± std of the
k models' metrics and (ii) the metrics of their concatenated ensemble (each model's test-time embedding, L2-normalised,
concatenated: 4 × 128-d → 512-d), with ``precision@1``, ``r_precision`` and ``map@r``.

``run_mlrc(config, output)`` trains the folds into ``output/fold{k}`` (finished folds are reused, interrupted ones
resumed) and writes ``output/mlrc.json`` and ``output/mlrc.md``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import load_config
from .checkpoint import write_json, write_text

METRICS = ("precision@1", "r_precision", "map@r")


def fold_overrides(fold: int, folds: int) -> list[str]:
    return ["protocol.val_by=classes", f"protocol.n_folds={folds}", f"protocol.fold={fold}"]


def train_fold(config: str | Path, run_dir: Path, overrides: list[str], quiet: bool) -> None:
    from .trainer import Trainer

    if (run_dir / "metrics.json").is_file():
        return
    resume = (run_dir / "config.yaml").is_file()  # an interrupted fold (with or without a checkpoint yet)
    cfg = load_config(run_dir / "config.yaml", overrides) if resume else load_config(config, overrides)
    Trainer(cfg, run_dir, resume=resume, quiet=quiet).fit()


def ensemble_metrics(run_dirs: list[Path], device: str | None = None) -> dict:
    """Per-model and concatenated-ensemble test metrics of finished fold runs."""
    from ..run import load_run

    per_model, parts, reference, run = [], [], None, None
    for run_dir in run_dirs:
        run = load_run(run_dir, "best", device)
        emb = run.embed("test")
        if reference is not None and not (emb.indices == reference.indices).all():
            raise ValueError(f"{run_dir}: its test split differs from the first fold's; folds must share a test set")
        reference = emb if reference is None else reference
        metrics = run.score("test", emb)
        per_model.append({k: metrics[k] for k in METRICS})
        parts.append(F.normalize(emb.embeddings, dim=1))
    concatenated = run.score("test", reference.with_embeddings(torch.cat(parts, dim=1)))
    summary = {
        "models": per_model,
        "mean": {k: statistics.mean(m[k] for m in per_model) for k in METRICS},
        "std": {k: statistics.stdev(m[k] for m in per_model) if len(per_model) > 1 else 0.0 for k in METRICS},
        "concatenated": {k: concatenated[k] for k in METRICS},
        "dims": {"single": int(parts[0].shape[1]), "concatenated": sum(int(p.shape[1]) for p in parts)},
    }
    return summary


def markdown(summary: dict, name: str) -> str:
    d = summary["dims"]
    lines = [f"# MLRC: {name}", "", f"{len(summary['models'])} class-disjoint folds; test split.", "",
             "| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]  # fmt: skip
    for k, m in enumerate(summary["models"]):
        lines.append(f"| fold {k} ({d['single']}-d) | " + " | ".join(f"{m[x]:.4f}" for x in METRICS) + " |")
    mean, std = summary["mean"], summary["std"]
    lines.append(f"| mean ± std ({d['single']}-d) | " + " | ".join(f"{mean[x]:.4f} ± {std[x]:.4f}" for x in METRICS)
                 + " |")  # fmt: skip
    cat = summary["concatenated"]
    lines.append(f"| concatenated ({d['concatenated']}-d) | " + " | ".join(f"{cat[x]:.4f}" for x in METRICS) + " |")
    return "\n".join(lines) + "\n"


def run_mlrc(config: str | Path, output: str | Path, overrides: list[str] | None = None, *, folds: int = 4,
             only: list[int] | None = None, quiet: bool = False) -> dict:  # fmt: skip
    """Train every fold (or ``only`` these) and aggregate; returns the summary written to ``mlrc.json``."""
    from .. import distributed

    output = Path(output)
    if folds < 2:
        raise ValueError(f"MLRC needs at least 2 folds, got {folds}")
    chosen = list(range(folds)) if only is None else list(only)
    bad = [k for k in chosen if not 0 <= k < folds]
    if bad:
        raise ValueError(f"folds {bad} are outside 0..{folds - 1}")
    run_dirs = []
    for k in chosen:
        run_dir = output / f"fold{k}"
        if not quiet and distributed.is_main():
            print(f"deepmetric mlrc: fold {k} of {folds} → {run_dir}", flush=True)
        train_fold(config, run_dir, [*(overrides or []), *fold_overrides(k, folds)], quiet)
        run_dirs.append(run_dir)
    summary = {"config": str(config), "folds": folds, "trained": chosen, **ensemble_metrics(run_dirs)}
    if distributed.is_main():  # under torchrun every rank trained and scored; rank 0 writes
        write_json(output / "mlrc.json", summary)
        write_text(output / "mlrc.md", markdown(summary, Path(config).stem))
    return summary


def load_summary(output: str | Path) -> dict:
    return json.loads((Path(output) / "mlrc.json").read_text())

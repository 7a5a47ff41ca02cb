"""Does a calibrated match threshold keep its promise on classes never seen? Calibrate on the validation split,
measure on the test split.

    python -m benchmarks.calibration RUN [RUN ...] [--targets precision=0.9 precision=0.95 f1 fmr=1e-2 fmr=1e-3]
        [--write benchmarks/results/calibration.md]

For each run (e.g. the three seeds of one recipe) and each target, the threshold is chosen on the run's validation
split exactly as ``deepmetric calibrate`` does (`deepmetric.evaluation.calibration.calibrate`), then applied to the
test split with the same leave-one-out protocol: every test image queries the other test images, and is answered
"match" when its nearest one lies within the threshold. Reported: the threshold, then precision / recall / share
answered of nearest-neighbour matching and the pair false match rate, on validation (where they were chosen) and on
test (what a user would get on new classes), as mean ± std over the runs. A threshold that keeps its promise
shows the same precision (or FMR) on test as on validation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/calibration.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit, mean_std

DEFAULT_TARGETS = ("precision=0.9", "precision=0.95", "f1", "fmr=1e-2", "fmr=1e-3")
COLUMNS = ("precision", "recall", "accepted", "fmr")


def measure(run_dir: str, targets: list[str], checkpoint: str = "best", device: str | None = None) -> dict:
    """``{target: {"threshold", "val": {...}, "test": {...}}}`` for one run (a target no threshold reaches: None)."""
    from deepmetric.errors import ConfigError
    from deepmetric.evaluation.calibration import calibrate, nearest_decisions
    from deepmetric.evaluation.verification import pair_rates_at
    from deepmetric.run import load_run

    run = load_run(run_dir, checkpoint, device, dtype="float32")
    val, test = run.embed("val"), run.embed("test")
    test_decisions = nearest_decisions(test.embeddings, test.labels)
    out: dict = {}
    for target in targets:
        try:
            found = calibrate(val.embeddings, val.labels, target)
        except ConfigError as e:
            print(f"{run_dir}: {target}: {e}", file=sys.stderr)
            out[target] = None
            continue
        t = found["threshold"]
        on_test = test_decisions.at(t)
        on_test.update(pair_rates_at(test.embeddings, test.labels, t))
        out[target] = {"threshold": t, "val": found["achieved"], "test": on_test}
    return out


def table(results: dict[str, dict], targets: list[str]) -> list[str]:
    lines = [
        "| target | runs | threshold | " + " | ".join(f"val {c}" for c in COLUMNS) + " | "
        + " | ".join(f"test {c}" for c in COLUMNS) + " |",
        "|---|---:|---:|" + "---:|" * (2 * len(COLUMNS)),
    ]  # fmt: skip
    for target in targets:
        found = [r[target] for r in results.values() if r.get(target) is not None]
        if not found:
            lines.append(f"| {target} | 0 | no threshold reaches it on validation |" + " |" * (2 * len(COLUMNS)))
            continue
        thresholds = [f["threshold"] for f in found]
        cells = [f"{statistics.mean(thresholds):.4f} ± {statistics.stdev(thresholds) if len(found) > 1 else 0:.4f}"]
        for split in ("val", "test"):
            cells += [_cell([f[split][c] for f in found], c) for c in COLUMNS]
        lines.append(f"| {target} | {len(found)} | " + " | ".join(cells) + " |")
    return lines


def _cell(values: list[float], column: str) -> str:
    if column != "fmr":
        return mean_std(values)
    mean = sum(values) / len(values)
    return f"{mean:.2e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories with a validation split")
    ap.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--device", help="cpu, cuda (default: the run's)")
    ap.add_argument("--title", default="Calibrated thresholds: validation (chosen) vs test (unseen classes)")
    ap.add_argument("--write", help="append the result to this markdown file")
    args = ap.parse_args()
    results = {r: measure(r, args.targets, args.checkpoint, args.device) for r in args.runs}
    lines = [f"## {args.title}", "", command_line(), "", "Runs: " + ", ".join(f"`{r}`" for r in args.runs), ""]
    emit(lines + table(results, args.targets), args.write)


if __name__ == "__main__":
    main()

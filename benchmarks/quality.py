"""Quality of the Fashion-MNIST presets: each trained with several seeds, test recall@1 / map@r / nmi as mean ± std.

    python benchmarks/quality.py                                  # every preset in configs/fashion_mnist, 3 seeds
    python benchmarks/quality.py --presets margin_dw contrastive --seeds 0 1 2 \
        --write benchmarks/results/fashion_mnist.md
    python benchmarks/quality.py --set train.epochs=2             # extra overrides for every run

Runs go to ``--runs`` (default runs/quality/PRESET-seedN); an existing finished run is reused, an interrupted one is
resumed, so the benchmark can be stopped and restarted; a run made with other settings (another ``--set``) is
refused, never reused (``benchmarks._report.train_once``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/quality.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit, overrides_from, train_once
from deepmetric.compare import compare

METRICS = ("recall@1", "map@r", "nmi")
# the standard-loss presets of configs/fashion_mnist (the eps_*/vanilla_* twins have their own benchmark)
PRESETS = ("triplet_semihard", "margin_dw", "multi_similarity", "contrastive", "proxy_anchor", "normalized_softmax",
           "arcface")  # fmt: skip


def run_one(preset: Path, seed: int, runs: Path, extra: list[str]) -> dict:
    overrides = {"train__seed": seed, "report__enabled": False, **overrides_from(extra)}
    return train_once(preset, overrides, runs / f"{preset.stem}-seed{seed}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", help="preset names in configs/fashion_mnist (default: PRESETS)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--write", help="append the table to this markdown file")
    args = ap.parse_args(argv)
    folder = Path("configs/fashion_mnist")
    names = args.presets or list(PRESETS)
    run_dirs, seconds = [], []
    for name in names:
        preset = folder / f"{name}.yaml"
        if not preset.is_file():
            raise SystemExit(f"no preset {preset}")
        t0 = time.perf_counter()
        for seed in args.seeds:
            run_one(preset, seed, Path(args.runs), args.set)
            run_dirs.append(str(Path(args.runs) / f"{preset.stem}-seed{seed}"))
        seconds.append(f"{name} {(time.perf_counter() - t0) / len(args.seeds):.0f}")
        print(f"{name}: done", flush=True)
    # the table is deepmetric compare's (groups = the runs' configs minus the seed), as a user would make it
    table = compare(run_dirs, list(METRICS), split="test", fmt="markdown")
    lines = [
        command_line(),
        "",
        f"Fashion-MNIST zero-shot (train classes 0–4, test on the unseen 5–9), seeds {args.seeds}, test split "
        f"(`deepmetric compare {args.runs}/*-seed* --metrics {' '.join(METRICS)} --format markdown`)",
        "",
        table,
        "",
        "Seconds per run: " + ", ".join(seconds) + ".",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()

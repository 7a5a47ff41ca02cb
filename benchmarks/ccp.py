"""CCP against its base loss: C2 and multi-similarity, base vs CCP, several seeds.

    python benchmarks/ccp.py --protocol fmnist_zero_shot --seeds 0 1 2
    python benchmarks/ccp.py --protocol glyphs_zero_shot --glyphs ~/.cache/deepmetric/glyphs

``fmnist_zero_shot``: the presets ``configs/fashion_mnist/{c2,ccp_c2,ms,ccp_ms}.yaml`` as they are.
``glyphs_zero_shot``: the same presets on the glyph benchmark's 185 / 185 class split, with MLRC-style validation
(4 class-disjoint folds of the 185 training classes; seed s validates on fold s mod 4), 16 classes × 4, one epoch.
Each cell is mean ± std over the seeds of the test ``map@r`` and ``precision@1``, and of the number of CCP stages
the run went through. Runs are kept in ``--runs`` and reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _glyphs import GLYPH_DATA, zero_shot_csv  # benchmarks/_glyphs.py
from _report import command_line, emit, mean_std, train_once  # benchmarks/_report.py

PAIRS = {"c2": ("c2", "ccp_c2"), "ms": ("ms", "ccp_ms")}
GLYPHS = {
    **GLYPH_DATA, "protocol__name": "official", "protocol__val_by": "classes", "protocol__n_folds": 4,
    "data__classes_per_batch": 16, "data__samples_per_class": 4, "train__epochs": 1,
    "train__eval_every_steps": 100, "train__early_stopping_patience": 10,
    "method__options__proxies_per_class": 4, "method__options__pool_size": 7,
}  # fmt: skip


def stages(run_dir: Path) -> int:
    """How many CCP stages the run went through (1 = the proxies were never re-initialised; 0 = no CCP)."""
    log = run_dir / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    if not any(r.get("type") == "eval" for r in records):
        return 0
    return 1 + sum(r.get("type") == "ccp_stage" for r in records)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=("fmnist_zero_shot", "glyphs_zero_shot"), required=True)
    ap.add_argument("--losses", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--glyphs", default="~/.cache/deepmetric/glyphs", help="root of a glyph benchmark build")
    ap.add_argument("--runs", default="runs/ccp")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--write", help="append the table to this markdown file")
    args = ap.parse_args(argv)
    base = {"report__enabled": False}
    if args.protocol == "glyphs_zero_shot":
        base.update(GLYPHS, data__root=str(zero_shot_csv(args.glyphs)))
    for item in args.set:
        key, _, value = item.partition("=")
        base[key.replace(".", "__")] = value
    rows = []
    for loss in args.losses:
        for preset in PAIRS[loss]:
            results, counts = [], []
            for seed in args.seeds:
                overrides = {**base, "train__seed": seed}
                if args.protocol == "glyphs_zero_shot":
                    overrides["protocol__fold"] = seed % 4
                if not preset.startswith("ccp"):
                    overrides = {k: v for k, v in overrides.items() if not k.startswith("method__")}
                run_dir = Path(args.runs) / args.protocol / f"{preset}-seed{seed}"
                results.append(train_once(Path("configs/fashion_mnist") / f"{preset}.yaml", overrides, run_dir))
                counts.append(stages(run_dir) if preset.startswith("ccp") else 0)
            test = [r["test"] for r in results]
            steps = [r["steps"] for r in results]
            rows.append(f"| {loss} | {'CCP' if preset.startswith('ccp') else 'base'} | "
                        f"{mean_std([t['map@r'] for t in test])} | {mean_std([t['precision@1'] for t in test])} | "
                        f"{mean_std(counts) if preset.startswith('ccp') else '–'} | {mean_std(steps)} |")  # fmt: skip
            print(rows[-1], flush=True)
    emit([command_line(), "", f"{args.protocol}, seeds {args.seeds}, test split", "",
          "| loss | method | map@r | precision@1 | stages | steps |", "|---|---|---:|---:|---:|---:|", *rows],
         args.write)  # fmt: skip


if __name__ == "__main__":
    main()

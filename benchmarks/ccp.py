"""CCP against its base loss: C2 and multi-similarity, base vs CCP, several seeds.

    python benchmarks/ccp.py --protocol fmnist_zero_shot --seeds 0 1 2
    python benchmarks/ccp.py --protocol glyphs_zero_shot --glyphs ~/.cache/deepmetric/glyphs [--glyph-fonts 160]

``fmnist_zero_shot``: the presets ``configs/fashion_mnist/{c2,ccp_c2,ms,ccp_ms}.yaml`` as they are.
``glyphs_zero_shot``: the same presets on the glyph benchmark's 185 / 185 class split, with MLRC-style validation
(4 class-disjoint folds of the 185 training classes; seed s validates on fold s mod 4), 16 classes × 4, one epoch.
``glyphs_pretrained``: as in ``benchmarks/diva.py``, the backbone first trained on the Greek, Cyrillic and digit
characters (the paper's setting starts from ImageNet weights), then base or CCP on the Latin characters only.
Each cell is mean ± std over the seeds of the test ``map@r`` and ``precision@1``, and of the number of CCP stages
the run went through. The first row is the network as initialised (no training), the reference that training on the
seen classes should improve on. Runs are kept in ``--runs`` and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/ccp.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._glyphs import GLYPH_DATA, glyph_csv, pretrained_backbone
from benchmarks._report import (
    add_study_arguments,
    command_line,
    emit,
    mean_std,
    overrides_from,
    train_once,
    untrained_overrides,
)

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
    ap.add_argument("--protocol", choices=("fmnist_zero_shot", "glyphs_zero_shot", "glyphs_pretrained"), required=True)
    ap.add_argument("--losses", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    add_study_arguments(ap, runs="runs/ccp")
    args = ap.parse_args(argv)
    base = {"report__enabled": False}
    tag = args.protocol
    if args.protocol != "fmnist_zero_shot":
        scripts = ("Latin",) if args.protocol == "glyphs_pretrained" else None
        base.update(GLYPHS, data__root=str(glyph_csv(args.glyphs, fonts=args.glyph_fonts or None, scripts=scripts)))
        tag = f"{args.protocol}-f{args.glyph_fonts}"
    if args.protocol == "glyphs_pretrained":
        base["model__weights"] = str(pretrained_backbone(args.glyphs))
    base.update(overrides_from(args.set))
    cells = [("–", "untrained", "c2")] + [
        (loss, kind, preset) for loss in args.losses for kind, preset in zip(("base", "CCP"), PAIRS[loss], strict=True)
    ]
    rows = []
    for loss, kind, preset in cells:
        results, counts = [], []
        for seed in args.seeds:
            overrides = {**base, "train__seed": seed}
            if args.protocol != "fmnist_zero_shot":
                overrides["protocol__fold"] = seed % 4
            if kind != "CCP":
                overrides = {k: v for k, v in overrides.items() if not k.startswith("method__")}
            if kind == "untrained":
                overrides = untrained_overrides(overrides)
            run_dir = Path(args.runs) / tag / f"{'untrained' if kind == 'untrained' else preset}-seed{seed}"
            results.append(train_once(Path("configs/fashion_mnist") / f"{preset}.yaml", overrides, run_dir))
            counts.append(stages(run_dir) if kind == "CCP" else 0)
        test = [r["test"] for r in results]
        steps = [r["steps"] for r in results]
        rows.append(f"| {loss} | {kind} | "
                    f"{mean_std([t['map@r'] for t in test])} | {mean_std([t['precision@1'] for t in test])} | "
                    f"{mean_std(counts) if kind == 'CCP' else '–'} | {mean_std(steps)} |")  # fmt: skip
        print(rows[-1], flush=True)
    emit([command_line(), "", f"{tag}, seeds {args.seeds}, test split", "",
          "| loss | method | map@r | precision@1 | stages | steps |", "|---|---|---:|---:|---:|---:|", *rows],
         args.write)  # fmt: skip


if __name__ == "__main__":
    main()

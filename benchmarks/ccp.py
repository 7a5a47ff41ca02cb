"""CCP against its base loss: C2 and multi-similarity, base vs CCP, several seeds.

    python benchmarks/ccp.py --protocol fmnist_zero_shot --seeds 0 1 2
    python benchmarks/ccp.py --protocol glyphs_zero_shot --glyphs ~/.cache/deepmetric/glyphs [--glyph-fonts 160]
    python -m benchmarks.ccp --regime pretrained --protocol glyphs_zero_shot --glyphs .carry/glyphs --glyph-fonts 0

``fmnist_zero_shot``: the presets ``configs/fashion_mnist/{c2,ccp_c2,ms,ccp_ms}.yaml`` as they are.
``glyphs_zero_shot``: the same presets on the glyph benchmark's 185 / 185 class split, with MLRC-style validation
(4 class-disjoint folds of the 185 training classes; seed s validates on fold s mod 4), 16 classes × 4, one epoch.
``glyphs_pretrained``: as in ``benchmarks/diva.py``, the backbone first trained on the Greek, Cyrillic and digit
characters (the paper's setting starts from ImageNet weights), then base or CCP on the Latin characters only.
Each cell is mean ± std over the seeds of the test ``map@r`` and ``precision@1``, and of the number of CCP stages
the run went through. The first row is the network as initialised (no training), the reference that training on the
seen classes should improve on. Runs are kept in ``--runs`` and reused; ``--jobs N`` trains N at once.

``--regime pretrained`` (benchmarks/_regime.py): base and CCP from the ImageNet-pretrained Lite0, 800 steps of 32 × 4
(3 × 42 on Fashion-MNIST) with validation every 20 steps (40 on Fashion-MNIST) on held-out training classes and no
early stopping, so the stage patience (3 validations without a gain) has room to end stages; the first rows are then
the pretrained trunk's pooled features and the model as built, both measured before step 1 of the first base runs.
Below the table, per CCP run: the steps where stages ended and what each re-initialisation did to validation map@r.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/ccp.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._glyphs import GLYPH_DATA, glyph_csv, pretrained_backbone
from benchmarks._regime import REFERENCE, check_protocol, pretrained
from benchmarks._report import add_study_arguments, mean_std, overrides_from, untrained_overrides
from benchmarks._runs import Cell, Run, run_study, summary

PAIRS = {"c2": ("c2", "ccp_c2"), "ms": ("ms", "ccp_ms")}
PRESETS = Path("configs/fashion_mnist")
PRETRAINED = ("glyphs_zero_shot", "fmnist_zero_shot")
GLYPHS = {
    **GLYPH_DATA, "protocol__name": "official", "protocol__val_by": "classes", "protocol__n_folds": 4,
    "data__classes_per_batch": 16, "data__samples_per_class": 4, "train__epochs": 1,
    "train__eval_every_steps": 100, "train__early_stopping_patience": 10,
    "method__options__proxies_per_class": 4, "method__options__pool_size": 7,
}  # fmt: skip


def _records(run_dir: Path) -> list[dict]:
    log = run_dir / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def stages(run_dir: Path) -> int:
    """How many CCP stages the run went through (1 = the proxies were never re-initialised; 0 = no CCP)."""
    records = _records(run_dir)
    if not any(r.get("type") == "eval" for r in records):
        return 0
    return 1 + sum(r.get("type") == "ccp_stage" for r in records)


def projections(run_dir: Path, metric: str = "map@r") -> list[str]:
    """Each stage end of a CCP run: ``step S: best B → next N → best of the stage B'``, the validation ``metric``
    at the stage's best, at the first validation after the re-initialisation, and the next stage's best."""
    evals = [
        (r["step"], r[metric])
        for r in _records(run_dir)
        if r.get("type") == "eval" and r.get("split") == "val" and not r.get("baseline") and metric in r
    ]
    ends = [r["step"] for r in _records(run_dir) if r.get("type") == "ccp_stage"]
    out = []
    for i, step in enumerate(ends):
        before = [v for s, v in evals if (ends[i - 1] if i else 0) < s <= step]
        after = [v for s, v in evals if step < s <= (ends[i + 1] if i + 1 < len(ends) else float("inf"))]
        nxt = f"{after[0]:.3f} → best {max(after):.3f}" if after else "–"
        out.append(f"step {step}: best {max(before, default=float('nan')):.3f} → {nxt}")
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=("fmnist_zero_shot", "glyphs_zero_shot", "glyphs_pretrained"), required=True)
    ap.add_argument("--losses", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    add_study_arguments(ap, runs="runs/ccp")
    return ap


def setup(args) -> tuple[dict, str]:
    """The overrides every run of the study shares, and its tag (the runs' subfolder)."""
    check_protocol(args.regime, args.protocol, PRETRAINED)
    base = {"report__enabled": False}
    tag = args.protocol
    if args.protocol != "fmnist_zero_shot":
        scripts = ("Latin",) if args.protocol == "glyphs_pretrained" else None
        base.update(GLYPHS, data__root=str(glyph_csv(args.glyphs, fonts=args.glyph_fonts or None, scripts=scripts)))
        tag = f"{args.protocol}-f{args.glyph_fonts}"
    if args.protocol == "glyphs_pretrained":
        base["model__weights"] = str(pretrained_backbone(args.glyphs))
    if args.regime == "pretrained":
        fmnist = args.protocol == "fmnist_zero_shot"  # its validation is 12,000 images: every 40 steps
        base.update(pretrained("fmnist" if fmnist else "glyphs", 800, 40 if fmnist else 20))
        base["train__early_stopping_patience"] = None
        tag += "-pretrained"
    base.update(overrides_from(args.set))
    return base, tag


def cells(args) -> list[Cell]:
    """The untrained network (preset regime), then base and CCP per loss, over the seeds."""
    base, tag = setup(args)
    kinds = [("–", "untrained", "c2")] if args.regime == "preset" else []
    kinds += [(loss, kind, preset) for loss in args.losses for kind, preset in zip(("base", "CCP"), PAIRS[loss],
                                                                                       strict=True)]  # fmt: skip
    out = []
    for loss, kind, preset in kinds:
        runs = []
        for seed in args.seeds:
            overrides = {**base, "train__seed": seed}
            if args.protocol != "fmnist_zero_shot" and args.regime == "preset":
                overrides["protocol__fold"] = seed % 4
            if kind != "CCP":
                overrides = {k: v for k, v in overrides.items() if not k.startswith("method__")}
            if kind == "untrained":
                overrides = untrained_overrides(overrides)
            if args.regime == "pretrained" and (loss, kind) == (args.losses[0], "base"):
                overrides.update(REFERENCE)  # its step-0 scores give the table's first rows
            name = "untrained" if kind == "untrained" else preset
            runs.append(Run(PRESETS / f"{preset}.yaml", overrides, Path(args.runs) / tag / f"{name}-seed{seed}"))
        out.append(Cell((loss, kind), runs))
    return out


def _trunk_rows(cells: list[Cell]) -> list[str]:
    """The pretrained regime's reference rows, measured before step 1 of the first base runs."""
    base = [m for m in next(c for c in cells if c.label[1] == "base").finished() if "baseline" in m]
    if not base:
        return []
    rows = []
    for label, pick in (("pretrained trunk, pooled 1,280-d (no training)", lambda m: m["baseline"]["trunk"]["test"]),
                        ("model as built (trunk + fresh 128-d head)", lambda m: m["baseline"]["test"])):  # fmt: skip
        tests = [pick(m) for m in base]
        more = f" (n={len(tests)})" if len(tests) < len(cells[0].runs) else ""
        rows.append(f"| – | {label} | {mean_std([t['map@r'] for t in tests])}{more} | "
                    f"{mean_std([t['precision@1'] for t in tests])}{more} | – | 0 |")  # fmt: skip
    return rows


def table(args, cells: list[Cell], command: str) -> list[str]:
    _, tag = setup(args)
    rows = _trunk_rows(cells) if args.regime == "pretrained" else []
    notes = []
    for c in cells:
        loss, kind = c.label
        done = [r for r in c.runs if r.metrics() is not None]
        counts = [stages(r.run_dir) for r in done]
        stage_cell = mean_std(counts) if kind == "CCP" and counts else "–"
        steps = mean_std([r.metrics()["steps"] for r in done]) if done else "–"
        rows.append(f"| {loss} | {kind} | " + " | ".join(summary(c.runs, ["map@r", "precision@1"]))
                    + f" | {stage_cell} | {steps} |")  # fmt: skip
        if kind == "CCP":
            notes += [f"- {loss} CCP, {r.run_dir.name}: {stages(r.run_dir)} stages; "
                      + ("; ".join(projections(r.run_dir)) or "no stage ended") for r in done]  # fmt: skip
    head = ["| loss | method | map@r | precision@1 | stages | steps |", "|---|---|---:|---:|---:|---:|"]
    lines = [command, "", f"{tag}, seeds {args.seeds}, test split", "", *head, *rows]
    if notes and args.regime == "pretrained":
        lines += ["", "Stage ends (validation map@r: the stage's best → first validation after the k-center "
                  "re-initialisation → the next stage's best):", "", *notes]  # fmt: skip
    return lines


def main(argv=None):
    run_study(parser(), cells, table, argv)


if __name__ == "__main__":
    main()

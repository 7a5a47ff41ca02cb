"""EPS against class collapse: vanilla vs EPS for triplet, margin, contrastive and multi-similarity, several seeds.

    python benchmarks/eps.py --protocol digits_parity --seeds 0 1 2
    python benchmarks/eps.py --protocol fmnist_superclass --seeds 0 1 2 --set train.epochs=1
    python benchmarks/eps.py --protocol glyphs_base_letter --glyphs ~/.cache/deepmetric/glyphs [--glyph-fonts 160]
    python benchmarks/eps.py --protocol glyphs_shared_letters   # only the base letters of two or more characters
    python benchmarks/eps.py --protocol fmnist_zero_shot          # what EPS does to ordinary retrieval

Superclass protocols train on coarse labels and report ``fine/nmi``, ``fine/recall@1``, ``coarse/recall@1`` and the
spread ratio; the zero-shot protocol reports ``recall@1`` and ``map@r``. Each cell is mean ± std over the seeds.
Runs are kept in ``--runs`` and reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/eps.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._glyphs import GLYPH_DATA, glyph_csv
from benchmarks._report import add_study_arguments, command_line, emit, mean_std, overrides_from, train_once

LOSSES = ("triplet", "margin", "contrastive", "multi_similarity")
DIGITS = {  # digits: 8 × 8 images, parity as the coarse label, a 50 / 50 stratified image split
    "data__name": "digits", "data__classes_per_batch": 2, "data__samples_per_class": 32, "augment__train": "none",
    "augment__flip": False, "augment__size": 8, "augment__padding": 1, "model__width": 16, "model__embedding_dim": 32,
    "protocol__test_fraction": 0.5, "train__epochs": 10, "schedule__warmup_steps": 10,
}  # fmt: skip
PROTOCOLS = {
    "fmnist_superclass": ({}, ("fine/nmi", "fine/recall@1", "coarse/recall@1", "spread_ratio")),
    "digits_parity": (DIGITS, ("fine/nmi", "fine/recall@1", "coarse/recall@1", "spread_ratio")),
    "glyphs_base_letter": (
        {
            **GLYPH_DATA,
            "data__options": "{coarse_column: base_letter}",
            "data__classes_per_batch": 16,
            "data__samples_per_class": 8,
            "protocol__test_fraction": 0.5,
            "protocol__val_by": "none",
            "train__epochs": 1,
            "train__max_steps": 300,
        },
        ("fine/nmi", "fine/recall@1", "coarse/recall@1", "spread_ratio"),
    ),
    "fmnist_zero_shot": (
        {
            "protocol__name": "zero_shot",
            "protocol__val_by": "none",
            "train__epochs": 1,
            "eval__clustering": False,
            "data__classes_per_batch": 5,
            "data__samples_per_class": 32,
        },
        ("recall@1", "map@r"),
    ),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # glyphs_shared_letters: glyphs_base_letter on the base letters that several characters share
    ap.add_argument("--protocol", choices=sorted([*PROTOCOLS, "glyphs_shared_letters"]), required=True)
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    add_study_arguments(ap, runs="runs/eps")
    args = ap.parse_args(argv)
    glyphs = args.protocol.startswith("glyphs")
    base, metrics = PROTOCOLS["glyphs_base_letter" if glyphs else args.protocol]
    overrides = {**base, "report__enabled": False}
    if glyphs:
        shared = args.protocol == "glyphs_shared_letters"
        data = glyph_csv(args.glyphs, split=None, fonts=args.glyph_fonts or None, shared_letters=shared)
        overrides["data__root"] = str(data)
    overrides.update(overrides_from(args.set))
    tag = f"{args.protocol}-f{args.glyph_fonts}" if glyphs else args.protocol
    rows = []
    for loss in args.losses:
        for mode in ("vanilla", "eps"):
            preset = Path("configs/fashion_mnist") / f"{mode}_{loss}.yaml"
            results = []
            for seed in args.seeds:
                run_dir = Path(args.runs) / tag / f"{mode}_{loss}-seed{seed}"
                results.append(train_once(preset, {**overrides, "train__seed": seed}, run_dir)["test"])
            cells = [mean_std([r[m] for r in results]) for m in metrics]
            rows.append(f"| {loss} | {mode} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    lines = [
        command_line(),
        "",
        f"{tag}, seeds {args.seeds}, test split",
        "",
        "| loss | positives | " + " | ".join(metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
        *rows,
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()

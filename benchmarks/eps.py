"""EPS against class collapse: vanilla vs EPS for triplet, margin, contrastive and multi-similarity, several seeds.

    python benchmarks/eps.py --protocol digits_parity --seeds 0 1 2
    python benchmarks/eps.py --protocol fmnist_superclass --seeds 0 1 2 --set train.epochs=1
    python benchmarks/eps.py --protocol glyphs_base_letter --glyphs ~/.cache/deepmetric/glyphs [--glyph-fonts 160]
    python benchmarks/eps.py --protocol glyphs_shared_letters   # only the base letters of two or more characters
    python benchmarks/eps.py --protocol fmnist_zero_shot          # what EPS does to ordinary retrieval
    python -m benchmarks.eps --regime pretrained --protocol glyphs_shared_letters --glyphs .carry/glyphs --glyph-fonts 0

Superclass protocols train on coarse labels and report ``fine/nmi``, ``fine/recall@1``, ``coarse/recall@1`` and the
spread ratio; the zero-shot protocol reports ``recall@1`` and ``map@r``. Each cell is mean ± std over the seeds.
Runs are kept in ``--runs`` and reused, so an interrupted benchmark continues where it stopped; ``--jobs N`` trains N
at once.

``--regime pretrained`` (benchmarks/_regime.py): both twins from the ImageNet-pretrained Lite0, 300 steps, validation
every 100 on held-out training characters (or 2 of Fashion-MNIST's 5 training classes) choosing the checkpoint by
``coarse/map@r`` (``map@r`` zero-shot). The glyph protocols then use the glyphs' class-disjoint split: the base
letters of the training characters are learnt, and the unseen test characters are scored with fine and coarse labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/eps.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._glyphs import GLYPH_DATA, glyph_csv
from benchmarks._regime import check_protocol, pretrained
from benchmarks._report import add_study_arguments, overrides_from
from benchmarks._runs import Cell, Run, run_study, summary

LOSSES = ("triplet", "margin", "contrastive", "multi_similarity")
PRESETS = Path("configs/fashion_mnist")
PRETRAINED = ("glyphs_base_letter", "glyphs_shared_letters", "fmnist_zero_shot")
PRETRAINED_STEPS = 300  # the demo's curve is past its steep part by then; both twins get the same budget
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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # glyphs_shared_letters: glyphs_base_letter on the base letters that several characters share
    ap.add_argument("--protocol", choices=sorted([*PROTOCOLS, "glyphs_shared_letters"]), required=True)
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    add_study_arguments(ap, runs="runs/eps")
    return ap


def setup(args) -> tuple[dict, str]:
    """The overrides every run of the study shares, and its tag (the runs' subfolder)."""
    check_protocol(args.regime, args.protocol, PRETRAINED)
    glyphs = args.protocol.startswith("glyphs")
    base, _ = PROTOCOLS["glyphs_base_letter" if glyphs else args.protocol]
    overrides = {**base, "report__enabled": False}
    split = "classes" if args.regime == "pretrained" else None
    if glyphs:
        shared = args.protocol == "glyphs_shared_letters"
        data = glyph_csv(args.glyphs, split=split, fonts=args.glyph_fonts or None, shared_letters=shared)
        overrides["data__root"] = str(data)
    if args.regime == "pretrained":
        overrides.update(pretrained("glyphs" if glyphs else "fmnist", PRETRAINED_STEPS, 100, batch=(16, 8)))
    overrides.update(overrides_from(args.set))
    tag = f"{args.protocol}-f{args.glyph_fonts}" if glyphs else args.protocol
    return overrides, tag + ("-pretrained" if args.regime == "pretrained" else "")


def cells(args) -> list[Cell]:
    """Per loss, vanilla then EPS, over the seeds."""
    overrides, tag = setup(args)
    out = []
    for loss in args.losses:
        for mode in ("vanilla", "eps"):
            runs = [Run(PRESETS / f"{mode}_{loss}.yaml", {**overrides, "train__seed": seed},
                        Path(args.runs) / tag / f"{mode}_{loss}-seed{seed}") for seed in args.seeds]  # fmt: skip
            out.append(Cell((loss, mode), runs))
    return out


def table(args, cells: list[Cell], command: str) -> list[str]:
    _, metrics = PROTOCOLS["glyphs_base_letter" if args.protocol.startswith("glyphs") else args.protocol]
    _, tag = setup(args)
    rows = [f"| {c.label[0]} | {c.label[1]} | " + " | ".join(summary(c.runs, list(metrics))) + " |" for c in cells]
    head = ["| loss | positives | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    return [command, "", f"{tag}, seeds {args.seeds}, test split", "", *head, *rows]


def main(argv=None):
    run_study(parser(), cells, table, argv)


if __name__ == "__main__":
    main()

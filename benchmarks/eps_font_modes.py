"""Does EPS keep the font-style modes inside a character? (glyph base-letter runs of ``benchmarks/eps.py``)

    python benchmarks/eps_font_modes.py runs/eps-900/glyphs_base_letter-f160 --glyphs ~/.cache/deepmetric/glyphs

For each finished run in the folder, on its test split: the spread ratio (``deepmetric.evaluation.diagnostics``) with
coarse = character and fine = character × the font's style category (serif / sans / mono / script / display, from the
benchmark's ``fonts.csv``): how far apart the style groups of one character stay, relative to different characters.
A nuisance mode for character retrieval, unlike the characters inside a base letter that EPS is meant to keep apart.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from _report import command_line, emit  # benchmarks/_report.py

from deepmetric.api import load_trainer
from deepmetric.evaluation.diagnostics import spread_ratio


def font_categories(glyphs: Path, table_csv: str) -> np.ndarray:
    """The style category of every row of the run's CSV, in row order."""
    with open(glyphs / "fonts.csv", newline="") as f:
        category = {r["font_id"]: r["category"] for r in csv.DictReader(f)}
    with open(table_csv, newline="") as f:
        return np.array([category[r["font_id"]] for r in csv.DictReader(f)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="a folder of benchmarks/eps.py glyphs_base_letter runs")
    ap.add_argument("--glyphs", default="~/.cache/deepmetric/glyphs")
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    rows = []
    for run_dir in sorted(p for p in args.runs.iterdir() if (p / "metrics.json").is_file()):
        trainer = load_trainer(run_dir)
        styles = font_categories(Path(args.glyphs).expanduser(), trainer.cfg.data.root)
        emb = trainer.embed("test")
        characters = emb.labels  # the fine label (character); training used the base letter
        _, groups = np.unique([f"{c}/{s}" for c, s in zip(characters, styles[emb.indices], strict=True)],
                              return_inverse=True)  # fmt: skip
        ratio = spread_ratio(emb.embeddings, groups, characters)
        rows.append(f"| {run_dir.name} | {ratio:.3f} |")
        print(rows[-1], flush=True)
    emit([command_line(), "", "| run | font-style spread ratio inside a character |", "|---|---:|", *rows],
         args.write)  # fmt: skip


if __name__ == "__main__":
    main()

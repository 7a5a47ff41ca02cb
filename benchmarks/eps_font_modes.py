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
    if not (glyphs / "fonts.csv").is_file():
        raise SystemExit(f"{glyphs}/fonts.csv not found: --glyphs must be the glyph build the runs were trained on")
    with open(glyphs / "fonts.csv", newline="") as f:
        category = {r["font_id"]: r["category"] for r in csv.DictReader(f)}
    with open(table_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "font_id" not in rows[0]:
        raise SystemExit(f"{table_csv} has no font_id column: not a glyph benchmark run")
    return np.array([category[r["font_id"]] for r in rows])


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
        _, style_codes = np.unique(styles[emb.indices], return_inverse=True)
        _, groups = np.unique(np.stack([characters, style_codes]), axis=1, return_inverse=True)
        ratio = spread_ratio(emb.embeddings, groups, characters)
        rows.append(f"| {run_dir.name} | {ratio:.3f} |")
        print(rows[-1], flush=True)
    emit([command_line(), "", "| run | font-style spread ratio inside a character |", "|---|---:|", *rows],
         args.write)  # fmt: skip


if __name__ == "__main__":
    main()

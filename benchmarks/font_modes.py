"""How far apart does an embedding keep the font styles of one character? (glyph benchmark runs)

    python benchmarks/font_modes.py runs/eps-900/glyphs_base_letter-f160 --glyphs ~/.cache/deepmetric/glyphs
    python benchmarks/font_modes.py runs/diva/glyphs_pretrained-f160/diva-rho6-seed0 runs/diva/.../margin_beta-seed0

For each finished run given (a run folder, or a folder of runs), on its test split: the spread ratio
(``deepmetric.evaluation.diagnostics``) with coarse = character and fine = character × the font's style category
(serif / sans / mono / script / display, from the benchmark's ``fonts.csv``): how far apart the style groups of one
character stay, relative to different characters. Font style is a nuisance mode for character retrieval. A DiVA run
gets a row for each head as well as for its test-time combination.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from deepmetric.evaluation.diagnostics import spread_ratio
from deepmetric.run import load_run

if not __package__:  # run as `python benchmarks/font_modes.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


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


def finished_runs(paths: list[Path]) -> list[Path]:
    runs = []
    for path in paths:
        if (path / "metrics.json").is_file():
            runs.append(path)
        elif path.is_dir():
            runs.extend(sorted(p for p in path.iterdir() if (p / "metrics.json").is_file()))
        else:
            raise SystemExit(f"{path}: not a finished run or a folder of runs")
    return runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="finished glyph-benchmark runs, or folders of them")
    ap.add_argument("--glyphs", default="~/.cache/deepmetric/glyphs")
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    rows = []
    for run_dir in finished_runs(args.runs):
        run = load_run(run_dir)
        styles = font_categories(Path(args.glyphs).expanduser(), run.cfg.data.root)
        emb = run.embed("test")
        characters = emb.labels  # the fine label under the superclass protocol, else the class
        _, style_codes = np.unique(styles[emb.indices], return_inverse=True)
        _, groups = np.unique(np.stack([characters, style_codes]), axis=1, return_inverse=True)
        views = {"": emb.embeddings} | {f" `{h}` head": e for h, e in (emb.heads or {}).items()}
        for label, embeddings in views.items():
            rows.append(f"| {run_dir.name}{label} | {spread_ratio(embeddings, groups, characters):.3f} |")
            print(rows[-1], flush=True)
    emit([command_line(), "", "| run | font-style spread ratio inside a character |", "|---|---:|", *rows],
         args.write)  # fmt: skip


if __name__ == "__main__":
    main()

"""The glyph benchmark (``../shared/benchmarks/glyphs/``) as deepmetric configs: its 185 / 185 zero-shot split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

GLYPH_DATA = {"data__name": "csv", "data__channels": 1, "data__load_size": 32, "augment__size": 32,
              "augment__flip": False, "augment__train": "pad_crop", "augment__padding": 2,
              "augment__eval": "none"}  # fmt: skip


def zero_shot_csv(root: str | Path) -> Path:
    """``ROOT/zero_shot.csv``: the build's index.csv with a ``split`` column from splits.json (written once)."""
    root = Path(root).expanduser()
    out = root / "zero_shot.csv"
    if out.is_file():
        return out
    if not (root / "index.csv").is_file():
        raise SystemExit(f"{root}/index.csv not found: build the glyph benchmark (../shared/benchmarks/glyphs)")
    splits = json.loads((root / "splits.json").read_text())
    split_of = {**dict.fromkeys(splits["train"], "train"), **dict.fromkeys(splits["test"], "test")}
    with open(root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0].keys(), "split"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "split": split_of[row["path"].split("/")[0]]})
    tmp.replace(out)
    return out

"""Image collections for embedding and indexing: a folder (flat, or one sub-folder per class) or a CSV file.

`list_items` also returns each image's metadata: a CSV's columns other than ``path`` and ``label``, typed per column
(integers when every non-empty value is one, else floats when every one is a number, else strings; an empty cell is no
value). Columns whose names cannot be filter fields (not identifiers, Python keywords, ``id``) are left out with a
warning naming them.
"""

from __future__ import annotations

import csv
import keyword
import math
import warnings
from pathlib import Path

from ..data.files import IMAGE_EXTENSIONS

NOT_METADATA = ("path", "label")


def list_images(source: str | Path) -> tuple[list[str], list | None]:
    """``(paths, labels)``: a CSV with ``path,label`` columns (labels kept), a folder of class sub-folders (labels
    = folder names), or any folder (every image below it, sorted; no labels)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        from ..data import csv_table

        table = csv_table.load(source)
        names = table.class_names
        labels = [names[int(c)] if names else int(c) for c in table.labels]
        return table.paths, labels
    if not source.is_dir():
        raise FileNotFoundError(f"image source {source} is neither a folder nor a .csv file")
    subfolders = [d for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    loose = [f for f in source.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if subfolders and not loose:
        from ..data import folder

        table = folder.load(source)
        return table.paths, [table.class_names[int(c)] for c in table.labels]
    paths = sorted(str(f) for f in source.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source}")
    return paths, None


def list_items(source: str | Path) -> tuple[list[str], list | None, list[dict] | None]:
    """``(paths, labels, metadata)``: as `list_images`, with one metadata dict per image from a CSV's other columns
    (None for a folder, or a CSV with only path and label)."""
    paths, labels = list_images(source)
    source = Path(source)
    if not source.is_file():
        return paths, labels, None
    return paths, labels, csv_metadata(source, paths)


def csv_metadata(source: Path, paths: list[str]) -> list[dict] | None:
    """Per path (as `list_images` lists the CSV's rows), its row's extra columns, typed (see the module doc)."""
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c not in NOT_METADATA]
        rows = list(reader)
    bad = [c for c in columns if not c.isidentifier() or keyword.iskeyword(c) or c == "id"]
    if bad:
        warnings.warn(f"{source}: column(s) {', '.join(map(repr, bad))} are not stored as metadata: a metadata name "
                      "is an identifier (letters, digits, _; not starting with a digit), not a Python keyword, not "
                      "id; rename the column to keep it", stacklevel=2)  # fmt: skip
    columns = [c for c in columns if c not in bad]
    if not columns:
        return None
    typed = {c: _typed([r.get(c) for r in rows]) for c in columns}
    position: dict[str, int] = {}
    for n, r in enumerate(rows):
        p = r["path"] if Path(r["path"]).is_absolute() else str(source.parent / r["path"])
        position.setdefault(str(Path(p).resolve()), n)  # the first of duplicate rows, as the CSV loader keeps
    return [{c: typed[c][position[str(Path(p).resolve())]] for c in columns} for p in paths]


def _typed(values: list[str | None]) -> list:
    """A column's cells as ints, else floats, else (stripped) strings; empty cells as None."""
    cells = [None if v is None or not v.strip() else v.strip() for v in values]
    for kind in (int, float):
        try:
            converted = [None if v is None else kind(v) for v in cells]
        except ValueError:
            continue
        if kind is float and not all(v is None or math.isfinite(v) for v in converted):
            continue  # nan / inf stay strings
        return converted
    return cells

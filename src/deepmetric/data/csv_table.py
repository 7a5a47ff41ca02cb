"""Users' own images listed in a CSV file.

Required columns ``path`` and ``label``; optional ``split`` (train / test / query / gallery / all), ``is_query``,
``is_gallery`` (0/1, true/false) and ``coarse_label``. Relative paths are relative to the CSV's folder. Labels
and coarse labels may be integers or strings (strings are mapped to integers in sorted order, the names kept).
Other column names can be chosen with ``label_column`` and ``coarse_column`` (e.g. the glyph benchmark's
``base_letter``). Label values are normalised before classes are formed: surrounding spaces go, and numbers are
compared as numbers ("5", "5.0" and " 5" are one class 5; "5.5" among integers is an error). A row repeating an
earlier row's path with the same label is dropped (counted in ``extra["duplicates_dropped"]`` and warned about); the
same path under two labels is an error naming both rows. ``name_column`` (default ``class_name`` when present) gives
integer labels display names for reports, e.g. the glyph benchmark's ``char``; it must name each class one way;
without it integer labels are their own names.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .table import SPLIT_NAMES, ImageTable

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def _normalise(value: str) -> str:
    """A label as a canonical string: stripped; an integral number written as an integer ("5.0", " 5" → "5")."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _encode(values: list[str], column: str, path: Path):
    """Integers stay integers; anything else is mapped to 0..C-1 in sorted order. Returns (codes, names)."""
    values = [_normalise(v) for v in values]
    try:
        return np.array([int(v) for v in values], dtype=np.int64), None
    except ValueError:
        pass
    fractional = [v for v in values if _is_number(v)]
    if fractional and len(fractional) == len(values):
        raise ValueError(f"{path}: column {column!r} has non-integer numbers such as {fractional[0]!r}; labels must "
                         "be integers or names")  # fmt: skip
    names = sorted(set(values))
    if "" in names:
        raise ValueError(f"{path}: column {column!r} has empty values (row {values.index('') + 2})")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), dict(enumerate(names))


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _drop_duplicates(rows: list[dict], paths: list[str], label_column: str, path: Path) -> tuple[list, list, int]:
    """Rows whose path repeats an earlier row's with the same (normalised) label dropped; a path with two labels is
    an error naming both rows."""
    first: dict[str, int] = {}
    keep = []
    for i, p in enumerate(paths):
        key = str(Path(p).resolve())
        if key in first:
            j = first[key]
            a, b = _normalise(rows[j][label_column]), _normalise(rows[i][label_column])
            if a != b:
                raise ValueError(f"{path}: rows {j + 2} and {i + 2} list the same image {p} with labels {a!r} and "
                                 f"{b!r}; an image has one class")  # fmt: skip
            continue
        first[key] = i
        keep.append(i)
    return [rows[i] for i in keep], [paths[i] for i in keep], len(paths) - len(keep)


def _flags(values: list[str], column: str, path: Path) -> np.ndarray:
    out = []
    for row, v in enumerate(values, start=2):
        v = v.strip().lower()
        if v not in _TRUE | _FALSE:
            raise ValueError(f"{path}:{row}: column {column!r} must be 0/1 or true/false, got {v!r}")
        out.append(v in _TRUE)
    return np.array(out, dtype=bool)


def _class_names(labels: np.ndarray, names: list[str], column: str, path: Path) -> dict[int, str]:
    """``{label: name}`` from a column naming each row's class; a class named two ways is an error."""
    out: dict[int, str] = {}
    for row, (label, name) in enumerate(zip(labels.tolist(), names, strict=True), start=2):
        if out.setdefault(label, name) != name:
            raise ValueError(f"{path}:{row}: column {column!r} names class {label} both {out[label]!r} and {name!r}")
    return out


@DATASETS.register("csv")
def load(
    root=None,
    file: str = "index.csv",
    label_column: str = "label",
    coarse_column: str | None = None,
    name_column: str | None = None,
) -> ImageTable:
    """Load ``root`` if it is a CSV file, else ``root/file``."""
    if root is None:
        raise ValueError("the csv dataset needs root=PATH (a CSV file, or a folder holding index.csv)")
    path = Path(root)
    if path.is_dir():
        path = path / file
    if not path.is_file():
        raise FileNotFoundError(f"CSV index not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ("path", label_column) if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {columns}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    base = path.parent
    paths = [r["path"] if Path(r["path"]).is_absolute() else str(base / r["path"]) for r in rows]
    rows, paths, duplicates = _drop_duplicates(rows, paths, label_column, path)
    if duplicates:
        message = (f"{path}: {duplicates} duplicate row(s) dropped (the same image listed twice with the same label); "
                   "a duplicate could otherwise land in both training and validation")  # fmt: skip
        warnings.warn(message, stacklevel=2)
    labels, class_names = _encode([r[label_column] for r in rows], label_column, path)
    name_column = name_column or ("class_name" if "class_name" in columns else None)
    if name_column:
        if name_column not in columns:
            raise ValueError(f"{path}: name column {name_column!r} not found; columns are {columns}")
        class_names = _class_names(labels, [r[name_column] for r in rows], name_column, path)
    if class_names is None:  # integer labels: their values name them in reports and `datasets info`
        class_names = {int(c): str(c) for c in np.unique(labels)}
    split = np.array([r.get("split") or "all" for r in rows], dtype=object)
    bad = sorted(set(split.tolist()) - set(SPLIT_NAMES))
    if bad:
        raise ValueError(f"{path}: unknown split value(s) {bad}; allowed: {list(SPLIT_NAMES)}")
    coarse_column = coarse_column or ("coarse_label" if "coarse_label" in columns else None)
    coarse = coarse_names = None
    if coarse_column:
        if coarse_column not in columns:
            raise ValueError(f"{path}: coarse column {coarse_column!r} not found; columns are {columns}")
        coarse, coarse_names = _encode([r[coarse_column] for r in rows], coarse_column, path)
    flags = {c: _flags([r[c] for r in rows], c, path) if c in columns else None for c in ("is_query", "is_gallery")}
    if (flags["is_query"] is None) != (flags["is_gallery"] is None):
        raise ValueError(f"{path}: give both is_query and is_gallery columns, or neither")
    return ImageTable(
        name="csv",
        labels=labels,
        split=split,
        paths=paths,
        coarse_labels=coarse,
        class_names=class_names,
        coarse_names=coarse_names,
        is_query=flags["is_query"],
        is_gallery=flags["is_gallery"],
        root=str(path),
        extra={"duplicates_dropped": duplicates},
    )

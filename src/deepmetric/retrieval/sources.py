"""Image collections for embedding and indexing: a folder (flat, or one sub-folder per class) or a CSV file."""

from __future__ import annotations

from pathlib import Path

from ..data.files import IMAGE_EXTENSIONS


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

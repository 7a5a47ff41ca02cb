"""Helpers shared by the file-based dataset loaders: reading index files with clear errors."""

from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


def require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}" + (f". {hint}" if hint else ""))
    return path


def read_rows(path: Path, n_fields: int, skip_header: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a text index file; a row with too few fields is an error naming its line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line_no <= skip_header or not line.strip():
                continue
            fields = line.split()
            if len(fields) < n_fields:
                raise ValueError(f"{path}:{line_no}: expected {n_fields} fields, got {len(fields)}: {line.strip()!r}")
            rows.append(fields)
    return rows


def find_dataset_root(root, marker: str, subfolder: str) -> Path:
    """``root`` itself if it holds ``marker``, else ``root/subfolder`` (accept either the parent or the folder)."""
    if root is None:
        raise ValueError("this dataset needs root=DIR (the folder of the official release)")
    root = Path(root)
    if (root / marker).exists():
        return root
    if (root / subfolder / marker).exists():
        return root / subfolder
    raise FileNotFoundError(f"{marker} not found in {root} or {root / subfolder}; point root at the official release")

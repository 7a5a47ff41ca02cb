"""Users' own images in ``root/<class>/<image>``: one folder per class, labels in sorted folder-name order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .files import IMAGE_EXTENSIONS
from .table import ImageTable


@DATASETS.register("folder")
def load(root=None) -> ImageTable:
    if root is None:
        raise ValueError("the folder dataset needs root=DIR with one sub-folder of images per class")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder dataset root {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    paths, labels, ignored = [], [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(f))
                labels.append(label)
            else:
                ignored.append(str(f))
    if not paths:
        raise ValueError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders")
    return ImageTable(
        name="folder",
        labels=np.array(labels),
        split=np.full(len(paths), "all", dtype=object),
        paths=paths,
        class_names=dict(enumerate(classes)),
        root=str(root),
        extra={"ignored_files": ignored},
    )

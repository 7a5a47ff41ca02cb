"""Users' own images in ``root/<class>/<image>``: one folder per class, labels in sorted folder-name order.

Images may sit in nested folders below their class folder; symbolic links are followed, a link that loops back
(or points to nothing) is reported, never silently skipped. A class folder without images gets no label (the
labels stay contiguous over the classes that have images) and is listed in ``extra["empty_class_folders"]``, which
``deepmetric datasets info`` shows, as it shows the files that are not images (``extra["ignored_files"]``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .files import IMAGE_EXTENSIONS
from .table import ImageTable


def _walk(folder: Path) -> tuple[list[Path], list[str], list[str]]:
    """(image files, other files, problems) below ``folder``, following symbolic links once each: a link to a folder
    already on the path is a loop, reported in ``problems`` with a dangling link."""
    images, others, problems = [], [], []
    seen: set[str] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            problems.append(f"{current}: symbolic link loop (already visited as {real}), not followed")
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(current) / name
            if not path.exists():
                problems.append(f"{path}: dangling symbolic link")
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                others.append(str(path))
        for name in list(dirs):
            link = Path(current) / name
            if link.is_symlink() and os.path.realpath(link) in seen | {real}:
                problems.append(f"{link}: symbolic link loop back to {os.path.realpath(link)}, not followed")
                dirs.remove(name)
    return images, others, problems


@DATASETS.register("folder")
def load(root=None) -> ImageTable:
    if root is None:
        raise ValueError("the folder dataset needs root=DIR with one sub-folder of images per class")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder dataset root {root} is not a directory")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    paths, labels, ignored, problems, empty, classes = [], [], [], [], [], []
    for name in folders:
        images, others, found = _walk(root / name)
        ignored += others
        problems += found
        if not images:
            empty.append(name)
            continue
        paths += [str(p) for p in images]
        labels += [len(classes)] * len(images)
        classes.append(name)
    if not paths:
        raise ValueError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders")
    if empty:
        warnings.warn(f"{root}: {len(empty)} class folder(s) without images left out: {empty[:5]}", stacklevel=2)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return ImageTable(
        name="folder",
        labels=np.array(labels),
        split=np.full(len(paths), "all", dtype=object),
        paths=paths,
        class_names=dict(enumerate(classes)),
        root=str(root),
        extra={"ignored_files": ignored, "empty_class_folders": empty, "link_problems": problems},
    )

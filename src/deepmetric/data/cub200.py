"""CUB-200-2011 (Wah et al. 2011) in its official layout, with the standard DML split (Oh Song et al. 2016).

``CUB_200_2011/images.txt`` (``id path``), ``image_class_labels.txt`` (``id class``), ``classes.txt``
(``class name``), images under ``images/``. Classes 1–100 train (5,864 images), 101–200 test (5,924 images),
zero-shot; the official train/test image split (``train_test_split.txt``) is a classification split and is ignored.
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .files import find_dataset_root, read_rows, require_file
from .table import ImageTable

N_TRAIN_CLASSES = 100


@DATASETS.register("cub200")
def load(root=None) -> ImageTable:
    base = find_dataset_root(root, "images.txt", "CUB_200_2011")
    images = dict(read_rows(require_file(base / "images.txt", "CUB images.txt"), 2))
    classes = read_rows(require_file(base / "image_class_labels.txt", "CUB image_class_labels.txt"), 2)
    names = {}
    if (base / "classes.txt").is_file():
        names = {int(c) - 1: n for c, n in read_rows(base / "classes.txt", 2)}
    missing = [i for i, _ in classes if i not in images]
    if missing:
        raise ValueError(f"{base / 'image_class_labels.txt'}: image ids {missing[:5]} are not in images.txt")
    labels = np.array([int(c) - 1 for _, c in classes], dtype=np.int64)
    return ImageTable(
        name="cub200",
        labels=labels,
        split=np.where(labels < N_TRAIN_CLASSES, "train", "test").astype(object),
        paths=[str(base / "images" / images[i]) for i, _ in classes],
        class_names=names or None,
        root=str(base),
    )

"""Stanford Online Products (Oh Song et al. 2016) in its official layout.

``Stanford_Online_Products/Ebay_train.txt`` and ``Ebay_test.txt`` (header ``image_id class_id super_class_id
path``): 59,551 train images of 11,318 classes and 60,502 test images of 11,316 classes. Coarse label =
``super_class_id`` (12 product categories, e.g. bicycle, chair, lamp).
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .files import find_dataset_root, read_rows, require_file
from .table import ImageTable

SUPER_CLASSES = [
    "bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle",
    "lamp", "mug", "sofa", "stapler", "table", "toaster",
]  # fmt: skip


@DATASETS.register("sop")
def load(root=None) -> ImageTable:
    base = find_dataset_root(root, "Ebay_train.txt", "Stanford_Online_Products")
    paths, labels, coarse, split = [], [], [], []
    for part in ("train", "test"):
        for _, class_id, super_id, rel in read_rows(require_file(base / f"Ebay_{part}.txt", "SOP index"), 4, 1):
            paths.append(str(base / rel))
            labels.append(int(class_id) - 1)
            coarse.append(int(super_id) - 1)
            split.append(part)
    coarse = np.array(coarse, dtype=np.int64)
    return ImageTable(
        name="sop",
        labels=np.array(labels),
        split=np.array(split, dtype=object),
        paths=paths,
        coarse_labels=coarse,
        coarse_names={i: n for i, n in enumerate(SUPER_CLASSES) if i <= coarse.max()},
        root=str(base),
    )

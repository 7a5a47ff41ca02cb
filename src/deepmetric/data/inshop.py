"""DeepFashion In-Shop Clothes Retrieval (Liu et al. 2016) in its official layout.

``list_eval_partition.txt`` (first line the count, second the header ``image_name item_id evaluation_status``):
25,882 train images of 3,997 items; 14,218 query and 12,612 gallery images of 3,985 items. Test queries are
searched against the gallery only. Coarse label = the clothing category in the image path (``img/WOMEN/Dresses/…``
→ ``WOMEN/Dresses``).
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .files import find_dataset_root, read_rows, require_file
from .table import ImageTable


@DATASETS.register("inshop")
def load(root=None) -> ImageTable:
    base = find_dataset_root(root, "list_eval_partition.txt", "Eval")
    index = require_file(base / "list_eval_partition.txt", "In-Shop list_eval_partition.txt")
    rows = read_rows(index, 3, skip_header=2)
    bad = sorted({s for _, _, s in rows} - {"train", "query", "gallery"})
    if bad:
        raise ValueError(f"{index}: unknown evaluation_status {bad}; expected train, query, gallery")
    images_root = base if (base / "img").exists() or not (base.parent / "img").exists() else base.parent
    items = sorted({item for _, item, _ in rows})
    item_index = {item: i for i, item in enumerate(items)}
    categories = sorted({"/".join(name.split("/")[1:3]) for name, _, _ in rows})
    category_index = {c: i for i, c in enumerate(categories)}
    status = np.array([s for _, _, s in rows], dtype=object)
    return ImageTable(
        name="inshop",
        labels=np.array([item_index[item] for _, item, _ in rows]),
        split=status,
        paths=[str(images_root / name) for name, _, _ in rows],
        coarse_labels=np.array([category_index["/".join(name.split("/")[1:3])] for name, _, _ in rows]),
        class_names=dict(enumerate(items)),
        coarse_names=dict(enumerate(categories)),
        is_query=status == "query",
        is_gallery=status == "gallery",
        root=str(base),
    )

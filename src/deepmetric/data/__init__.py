"""Datasets, protocols, the class-balanced sampler, image decoding and batched augmentation.

``DATASETS`` (`deepmetric.registry.DATASETS`): dataset name → loader ``load(root=None, **options) → ImageTable``, each
registered at its definition (``@DATASETS.register("cub200")``); importing this package imports every loader module.
"""

from __future__ import annotations

import inspect

from ..registry import DATASETS
from . import cars196, csv_table, cub200, digits, fashion_mnist, folder, glyphs, inshop, sop  # noqa: F401 (register)
from .augment import AugmentConfig, BatchAugment
from .images import BadImageError, ImageDataset, collate_batch, decode_image
from .sampler import ClassBalancedBatchSampler
from .splits import ProtocolConfig, Splits, class_disjoint_split, kfold_class_splits, make_splits
from .table import ImageTable


def load_dataset(name: str, root=None, **options) -> ImageTable:
    """Load a dataset by name (see ``DATASETS``); ``options`` go to its loader (e.g. ``label_column`` for csv)."""
    loader = DATASETS.get(name)
    accepted = set(inspect.signature(loader).parameters) - {"root"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"dataset {name!r} does not take option(s) {sorted(unknown)}; it takes {sorted(accepted)}")
    return loader(root, **options)


def check_files(table: ImageTable, decode: bool = False, progress: bool = True) -> list[tuple[str, str]]:
    """``[(path, problem)]`` for every image file that is missing, or (``decode=True``) cannot be decoded."""
    import os

    from tqdm.auto import tqdm

    if table.paths is None:
        return []
    problems = []
    for path in tqdm(table.paths, desc=f"checking {table.name}", unit="file", disable=not progress or None):
        if not os.path.isfile(path):
            problems.append((path, "missing"))
        elif decode:
            try:
                decode_image(path, 3, None)
            except BadImageError as e:
                problems.append((path, str(e)))
    return problems


__all__ = [
    "DATASETS",
    "AugmentConfig",
    "BadImageError",
    "BatchAugment",
    "ClassBalancedBatchSampler",
    "ImageDataset",
    "ImageTable",
    "ProtocolConfig",
    "Splits",
    "check_files",
    "class_disjoint_split",
    "collate_batch",
    "decode_image",
    "kfold_class_splits",
    "load_dataset",
    "make_splits",
]

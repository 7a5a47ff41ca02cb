"""Leakage-free protocols: which items train, validate and test (``docs/datasets.md``).

Protocols (``ProtocolConfig.name``):

- ``official``: the dataset's own split (CUB/Cars classes 1–100 / 1–98 train, SOP files, In-Shop partition).
- ``zero_shot``: train on ``train_classes``, test on ``test_classes`` (disjoint). Defaults: classes 0–4 / 5–9 for
  ``fashion_mnist`` and ``digits``; for other datasets a seeded ``test_fraction`` of the classes is held out for
  test (seed 0, so every run seed tests on the same classes). If the dataset's official split is an image split over
  shared classes (Fashion-MNIST's 60,000 / 10,000), training uses the official train images and testing the
  official test images.
- ``superclass``: train on coarse labels, evaluate on fine (and coarse) labels: built-in coarse maps for
  ``fashion_mnist`` (tops / footwear / trousers-and-bags), ``digits`` (parity), ``sop`` (super-class) and
  ``cars196`` (make), or ``coarse_map`` given explicitly. Uses the official image split, or a seeded stratified
  split of ``test_fraction`` of every class when there is none.
- ``default``: ``zero_shot`` for fashion_mnist and digits and for datasets without an official train / test split
  (``folder``, ``csv`` without a split column), ``official`` otherwise.

Validation is carved from the training items only, never from test: ``val_by="classes"`` holds out a seeded
fraction (or count) of the training classes (class-disjoint); with ``n_folds`` > 0 it is fold ``fold`` of a
class-disjoint k-fold partition (the 4-fold protocol of "A Metric Learning Reality Check"); ``images`` holds out a
stratified fraction of the training images; ``none`` has no validation; ``auto`` is ``classes`` when there are at
least 10 training classes (and the protocol is not ``superclass``, whose test set holds the training's fine
classes), else ``images``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .table import ImageTable

PROTOCOLS = ("default", "official", "zero_shot", "superclass")
VAL_MODES = ("auto", "classes", "images", "none")
ZERO_SHOT_DEFAULTS = {
    "fashion_mnist": (list(range(5)), list(range(5, 10))),
    "digits": (list(range(5)), list(range(5, 10))),
}
MIN_CLASSES_FOR_CLASS_VAL = 10


@dataclass
class ProtocolConfig:
    """The ``protocol`` section of a config."""

    name: str = "default"
    train_classes: list[int] | None = None
    test_classes: list[int] | None = None
    coarse_map: dict[int, int] | None = None
    test_fraction: float = 0.5
    val_by: str = "auto"
    val_fraction: float = 0.2
    val_classes: int | None = None
    n_folds: int = 0
    fold: int = 0


@dataclass
class Splits:
    """Table indices of each split, and the labels training uses (coarse under the superclass protocol)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    test_query: np.ndarray | None = None
    test_gallery: np.ndarray | None = None
    coarse_labels: np.ndarray | None = None
    protocol: str = "official"
    info: dict = field(default_factory=dict)


def class_disjoint_split(classes, *, fraction: float | None = None, count: int | None = None, seed: int = 0):
    """Split ``classes`` into (kept, held out), holding out ``count`` classes or ``fraction`` of them, seeded."""
    classes = np.asarray(sorted(set(np.asarray(classes).tolist())))
    n = len(classes)
    if count is None:
        if fraction is None or not 0 < fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
        count = max(1, round(fraction * n))
    if not 1 <= count < n:
        raise ValueError(f"cannot hold out {count} of {n} classes (need 1 ≤ count < {n})")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    held = np.sort(classes[perm[:count]])
    kept = np.sort(classes[perm[count:]])
    return kept, held


def kfold_class_splits(classes, n_folds: int = 4, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Class-disjoint k-fold cross-validation: ``[(train classes, validation classes)] × n_folds``.

    The classes are shuffled (seeded) and cut into ``n_folds`` near-equal folds; each fold validates once.
    """
    classes = np.asarray(sorted(set(np.asarray(classes).tolist())))
    if not 2 <= n_folds <= len(classes):
        raise ValueError(f"n_folds must be between 2 and the number of classes ({len(classes)}), got {n_folds}")
    perm = classes[np.random.Generator(np.random.PCG64(seed)).permutation(len(classes))]
    folds = np.array_split(perm, n_folds)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1 :])), np.sort(folds[i])) for i in range(n_folds)]


def stratified_image_split(indices, labels, fraction: float, seed: int):
    """Split item ``indices`` into (kept, held out) with ``fraction`` of every class held out (at least one item
    per class when the class has two or more)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.Generator(np.random.PCG64(seed))
    kept, held = [], []
    for c in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == c])
        n_held = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _has_image_split(table: ImageTable) -> bool:
    """True when the official train and test splits share classes (an image split, e.g. Fashion-MNIST)."""
    train, test = table.indices("train"), table.indices("test")
    return bool(len(train) and len(test) and np.intersect1d(table.labels[train], table.labels[test]).size)


def _check_classes(table: ImageTable, classes, key: str) -> np.ndarray:
    classes = np.asarray(classes, dtype=np.int64)
    unknown = np.setdiff1d(classes, table.labels)
    if unknown.size:
        raise ValueError(f"protocol.{key}: classes {unknown[:10].tolist()} do not exist in {table.name}")
    return classes


def make_splits(table: ImageTable, protocol: ProtocolConfig | None = None, seed: int = 0) -> Splits:
    """Apply ``protocol`` to ``table``: train / validation / test indices and the training labels."""
    p = protocol or ProtocolConfig()
    if p.name not in PROTOCOLS:
        raise ValueError(f"protocol.name must be one of {PROTOCOLS}, got {p.name!r}")
    if p.val_by not in VAL_MODES:
        raise ValueError(f"protocol.val_by must be one of {VAL_MODES}, got {p.val_by!r}")
    name = p.name
    if name == "default":
        no_split = not (len(table.indices("train")) and len(table.indices("test", "query", "gallery")))
        zero_shot = table.name in ZERO_SHOT_DEFAULTS or p.train_classes is not None or no_split
        name = "zero_shot" if zero_shot else "official"
    labels = table.labels
    coarse = table.coarse_labels
    if p.coarse_map is not None:
        missing = np.setdiff1d(np.unique(labels), np.array(list(p.coarse_map), dtype=np.int64))
        if missing.size:
            raise ValueError(f"protocol.coarse_map has no entry for classes {missing[:10].tolist()}")
        coarse = np.array([p.coarse_map[int(c)] for c in labels], dtype=np.int64)
    train_labels = labels
    query = gallery = None

    if name == "official":
        train = table.indices("train")
        test = table.indices("test", "query", "gallery")
        if not len(train) or not len(test):
            raise ValueError(
                f"{table.name} defines no train/test split: use protocol.name=zero_shot with train_classes and "
                "test_classes, or superclass"
            )
        if table.is_query is not None:
            query, gallery = np.flatnonzero(table.is_query), np.flatnonzero(table.is_gallery)
    elif name == "zero_shot":
        default = ZERO_SHOT_DEFAULTS.get(table.name)
        if p.train_classes is None and default is None:  # hold out test_fraction of the classes, the same every seed
            kept, held = class_disjoint_split(np.unique(labels), fraction=p.test_fraction, seed=0)
            default = (kept.tolist(), held.tolist())
        train_cls = _check_classes(
            table, p.train_classes if p.train_classes is not None else default[0], "train_classes"
        )
        if p.test_classes is not None:
            test_cls = _check_classes(table, p.test_classes, "test_classes")
        elif p.train_classes is None and default is not None:
            test_cls = np.asarray(default[1])
        else:
            test_cls = np.setdiff1d(np.unique(labels), train_cls)
        overlap = np.intersect1d(train_cls, test_cls)
        if overlap.size:
            raise ValueError(f"protocol train_classes and test_classes overlap in {overlap[:10].tolist()}")
        if not len(test_cls):
            raise ValueError("protocol leaves no test classes")
        image_split = _has_image_split(table)
        train = np.flatnonzero(np.isin(labels, train_cls) & ((table.split == "train") if image_split else True))
        test = np.flatnonzero(np.isin(labels, test_cls) & ((table.split == "test") if image_split else True))
    else:  # superclass
        if coarse is None:
            raise ValueError(f"{table.name} has no coarse labels: give protocol.coarse_map {{fine: coarse}}")
        train_labels = coarse
        if len(table.indices("train")) and len(table.indices("test")):
            train, test = table.indices("train"), table.indices("test")
        else:
            train, test = stratified_image_split(np.arange(len(table)), labels, p.test_fraction, seed)

    train, val = _validation(table, train, p, seed, superclass=name == "superclass")
    return Splits(
        train=train,
        val=val,
        test=test,
        train_labels=train_labels,
        test_query=query,
        test_gallery=gallery,
        coarse_labels=coarse,
        protocol=name,
        info=_describe(table, train, val, test, train_labels),
    )


def _validation(table: ImageTable, train: np.ndarray, p: ProtocolConfig, seed: int, superclass: bool):
    labels = table.labels
    classes = np.unique(labels[train])
    mode = p.val_by
    if mode == "auto":  # superclass tests on the training's fine classes, so its validation does too
        many = len(classes) >= MIN_CLASSES_FOR_CLASS_VAL or p.n_folds
        mode = "classes" if many and not superclass else "images"
    if mode == "none":
        return train, np.empty(0, dtype=np.int64)
    if mode == "images":
        return stratified_image_split(train, labels, p.val_fraction, seed)
    if p.n_folds:
        folds = kfold_class_splits(classes, p.n_folds, seed)
        if not 0 <= p.fold < p.n_folds:
            raise ValueError(f"protocol.fold must be in [0, {p.n_folds}), got {p.fold}")
        val_cls = folds[p.fold][1]
    else:
        if len(classes) < 3:
            raise ValueError(
                f"class-disjoint validation needs at least 3 training classes, {table.name} has {len(classes)}: "
                "set protocol.val_by=images"
            )
        _, val_cls = class_disjoint_split(classes, fraction=p.val_fraction, count=p.val_classes, seed=seed)
        if len(val_cls) < 2:
            _, val_cls = class_disjoint_split(classes, count=2, seed=seed)
    in_val = np.isin(labels[train], val_cls)
    return train[~in_val], train[in_val]


def _describe(table, train, val, test, train_labels) -> dict:
    def part(idx, lab):
        return {"images": len(idx), "classes": len(np.unique(lab[idx])) if len(idx) else 0}

    return {"train": part(train, train_labels), "val": part(val, table.labels), "test": part(test, table.labels)}

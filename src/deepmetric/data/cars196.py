"""Stanford Cars / CARS196 (Krause et al. 2013) in its official release layout, with the standard DML split.

``cars_annos.mat`` (fields ``relative_im_path``, ``class`` 1–196, ``test``; ``class_names``) and the images under
``car_ims/``. Classes 1–98 train (8,054 images), 99–196 test (8,131 images), zero-shot; the ``test`` flag of the
classification split is ignored. Coarse label = the make (first word of the class name, or the known two-word
makes), e.g. "Aston Martin V8 Vantage Convertible 2012" → "Aston Martin".
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .files import find_dataset_root
from .table import ImageTable

N_TRAIN_CLASSES = 98
TWO_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")


def make_of(class_name: str) -> str:
    for make in TWO_WORD_MAKES:
        if class_name.startswith(make + " "):
            return make
    return class_name.split()[0]


def _text(value) -> str:
    """A MATLAB string as loadmat returns it (str, or nested arrays around one str)."""
    while isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.ravel()[0]
    return str(value)


@DATASETS.register("cars196")
def load(root=None) -> ImageTable:
    from scipy.io import loadmat

    base = find_dataset_root(root, "cars_annos.mat", "stanford_cars")
    mat = loadmat(base / "cars_annos.mat", squeeze_me=True)
    for key in ("annotations", "class_names"):
        if key not in mat:
            raise ValueError(f"{base / 'cars_annos.mat'}: no '{key}' variable (found {sorted(mat)})")
    annotations = np.atleast_1d(mat["annotations"])
    fields = annotations.dtype.names or ()
    if not {"relative_im_path", "class"} <= set(fields):
        raise ValueError(f"{base / 'cars_annos.mat'}: annotations lack relative_im_path/class (fields {fields})")
    paths = [str(base / _text(a["relative_im_path"])) for a in annotations]
    labels = np.array([int(np.asarray(a["class"]).ravel()[0]) - 1 for a in annotations], dtype=np.int64)
    class_names = [_text(n) for n in np.atleast_1d(mat["class_names"])]
    makes = sorted({make_of(n) for n in class_names})
    make_index = {m: i for i, m in enumerate(makes)}
    coarse_of_class = np.array([make_index[make_of(n)] for n in class_names], dtype=np.int64)
    if labels.max() >= len(class_names):
        raise ValueError(f"{base / 'cars_annos.mat'}: class {labels.max() + 1} beyond the {len(class_names)} names")
    return ImageTable(
        name="cars196",
        labels=labels,
        split=np.where(labels < N_TRAIN_CLASSES, "train", "test").astype(object),
        paths=paths,
        coarse_labels=coarse_of_class[labels],
        class_names=dict(enumerate(class_names)),
        coarse_names=dict(enumerate(makes)),
        root=str(base),
    )

"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1,797 8 × 8 grayscale images, 10 classes.

No download. Pixel values 0–16 are scaled to 0–255. Coarse label (the superclass protocol): parity, 0 even, 1 odd.
The dataset defines no train/test split (split ``all``); its default protocol is zero-shot over classes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..registry import DATASETS
from .table import ImageTable

COARSE_NAMES = {0: "even", 1: "odd"}


@DATASETS.register("digits")
def load(root=None) -> ImageTable:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    return ImageTable(
        name="digits",
        labels=labels,
        split=np.full(len(labels), "all", dtype=object),
        images=torch.from_numpy(pixels).unsqueeze(1),
        coarse_labels=labels % 2,
        class_names={i: str(i) for i in range(10)},
        coarse_names=COARSE_NAMES,
        root="sklearn.datasets.load_digits",
    )

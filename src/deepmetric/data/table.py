"""`ImageTable`: what every dataset loader produces, before any protocol or sampling is applied."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SPLIT_NAMES = ("train", "test", "query", "gallery", "all")
SUMMARY_NAMES = 200  # class names listed by summary() (datasets info)


@dataclass
class ImageTable:
    """A dataset's items: images (file paths or one in-memory uint8 tensor), labels and the official split.

    Attributes:
        name: dataset name. labels: int64 (N,). split: str (N,), each one of ``SPLIT_NAMES`` (``all`` when the
        dataset defines no split). paths: N image paths (file datasets) or None. images: N × C × H × W uint8
        tensor (in-memory datasets) or None. coarse_labels: int64 (N,) super-class labels, or None.
        class_names: optional ``{label: name}``. coarse_names: optional ``{coarse label: name}``.
        is_query / is_gallery: optional bool (N,) for query/gallery protocols (a test item may be both).
    """

    name: str
    labels: np.ndarray
    split: np.ndarray
    paths: list[str] | None = None
    images: torch.Tensor | None = None
    coarse_labels: np.ndarray | None = None
    class_names: dict[int, str] | None = None
    coarse_names: dict[int, str] | None = None
    is_query: np.ndarray | None = None
    is_gallery: np.ndarray | None = None
    root: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.split = np.asarray(self.split, dtype=object)
        n = len(self.labels)
        if (self.paths is None) == (self.images is None):
            raise ValueError(f"{self.name}: give exactly one of paths or images")
        sizes = {"split": len(self.split)}
        if self.paths is not None:
            sizes["paths"] = len(self.paths)
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.dim() != 4:
                raise ValueError(f"{self.name}: images must be an N × C × H × W uint8 tensor")
            sizes["images"] = self.images.shape[0]
        if self.coarse_labels is not None:
            self.coarse_labels = np.asarray(self.coarse_labels, dtype=np.int64)
            sizes["coarse_labels"] = len(self.coarse_labels)
        for flag in ("is_query", "is_gallery"):
            if getattr(self, flag) is not None:
                setattr(self, flag, np.asarray(getattr(self, flag), dtype=bool))
                sizes[flag] = len(getattr(self, flag))
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"{self.name}: {n} labels but {wrong}")
        unknown = set(np.unique(self.split).tolist()) - set(SPLIT_NAMES)
        if unknown:
            raise ValueError(f"{self.name}: unknown split name(s) {sorted(unknown)}; use {SPLIT_NAMES}")

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self, *splits: str) -> np.ndarray:
        """Indices of the items in any of ``splits``."""
        return np.flatnonzero(np.isin(self.split, splits))

    def summary(self) -> dict:
        """``{"name", "images", "classes", "splits": {split: {"images", "classes"}}, "class_names", ...}`` with what
        the loader left out (empty class folders, link problems, dropped duplicates, non-image files), for
        ``deepmetric datasets info``."""
        out = {"name": self.name, "images": len(self), "classes": len(np.unique(self.labels)), "splits": {}}
        for s in [s for s in SPLIT_NAMES if (self.split == s).any()]:
            idx = self.indices(s)
            out["splits"][s] = {"images": len(idx), "classes": len(np.unique(self.labels[idx]))}
        if self.coarse_labels is not None:
            out["coarse_classes"] = len(np.unique(self.coarse_labels[self.coarse_labels >= 0]))
        if self.is_query is not None:
            out["query_images"] = int(self.is_query.sum())
            out["gallery_images"] = int(self.is_gallery.sum())
        if self.class_names:
            names = [str(self.class_names.get(int(c), c)) for c in np.unique(self.labels)]
            out["class_names"] = names if len(names) <= SUMMARY_NAMES else [*names[:SUMMARY_NAMES], "…"]
        for key in ("empty_class_folders", "link_problems", "duplicates_dropped"):
            if self.extra.get(key):
                out[key] = self.extra[key]
        if self.extra.get("ignored_files"):
            out["ignored_files"] = len(self.extra["ignored_files"])
        return out

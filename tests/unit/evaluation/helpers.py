"""Synthetic embeddings for evaluation tests."""

import torch


def clustered(n_classes: int, per_class: int | list[int], dim: int, spread: float = 1.0, seed: int = 0):
    """Gaussian class clusters with random (tie-free, continuous) noise; returns (embeddings, int64 labels)."""
    g = torch.Generator().manual_seed(seed)
    sizes = per_class if isinstance(per_class, list) else [per_class] * n_classes
    assert len(sizes) == n_classes, f"{len(sizes)} sizes for {n_classes} classes"
    centres = torch.randn(n_classes, dim, generator=g)
    labels = torch.cat([torch.full((s,), c, dtype=torch.int64) for c, s in enumerate(sizes)])
    x = centres[labels] + spread * torch.randn(labels.numel(), dim, generator=g)
    return x, labels

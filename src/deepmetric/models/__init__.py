"""Backbones and the multi-head Embedder."""

from .backbones import POOLINGS, Backbone, SmallCNN, SmallResNet, build_backbone, load_weights
from .embedder import Embedder, build_embedder

__all__ = [
    "POOLINGS",
    "Backbone",
    "Embedder",
    "SmallCNN",
    "SmallResNet",
    "build_backbone",
    "build_embedder",
    "load_weights",
]

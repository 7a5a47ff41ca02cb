"""Backbones and the multi-head Embedder."""

from .backbones import BACKBONES, POOLINGS, TRUNKS, Backbone, SmallCNN, SmallResNet, build_backbone, load_weights
from .embedder import Embedder, build_embedder

__all__ = [
    "BACKBONES",
    "POOLINGS",
    "TRUNKS",
    "Backbone",
    "Embedder",
    "SmallCNN",
    "SmallResNet",
    "build_backbone",
    "build_embedder",
    "load_weights",
]

"""Backbones and the multi-head Embedder."""

from .backbones import POOLINGS, Backbone, SmallCNN, SmallResNet, build_backbone, load_weights
from .embedder import Embedder

__all__ = ["POOLINGS", "Backbone", "Embedder", "SmallCNN", "SmallResNet", "build_backbone", "load_weights"]

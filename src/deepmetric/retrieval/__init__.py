"""From a trained run to search: load, embed, export, index, search, serve."""

from .index import KINDS, EmbeddingIndex
from .model import EmbeddingModel, load
from .sources import list_images, list_items

__all__ = ["KINDS", "EmbeddingIndex", "EmbeddingModel", "list_images", "list_items", "load"]

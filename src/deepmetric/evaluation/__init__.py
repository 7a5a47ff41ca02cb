"""Exact chunked k-NN retrieval metrics, pair verification metrics and clustering metrics (docs/metrics.md)."""

from .clustering import clustering_metrics, kmeans
from .inputs import encode_labels
from .knn import DEFAULT_MEMORY_BUDGET, KnnChunk, iter_knn
from .metrics import (
    DEFAULT_KS,
    knn_label_metrics,
    per_class_retrieval_metrics,
    per_query_retrieval_metrics,
    retrieval_metrics,
)
from .verification import DEFAULT_FMRS, verification_metrics

__all__ = [
    "DEFAULT_FMRS",
    "DEFAULT_KS",
    "DEFAULT_MEMORY_BUDGET",
    "KnnChunk",
    "clustering_metrics",
    "encode_labels",
    "iter_knn",
    "kmeans",
    "knn_label_metrics",
    "per_class_retrieval_metrics",
    "per_query_retrieval_metrics",
    "retrieval_metrics",
    "verification_metrics",
]

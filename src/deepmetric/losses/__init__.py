"""deepmetric's own losses (PML call contract: ``loss(embeddings, labels, indices_tuple=None)``)."""

from ..registry import OWN_LOSSES
from .dance import DaNCELoss, dance_weights
from .decorrelation import AdversarialDecorrelation, coactivation
from .gradient_reversal import GradientReversal, reverse_gradient
from .margin import DivaMarginLoss
from .reference_pairs import (
    AllTripletsMarginLoss,
    CosineContrastiveLoss,
    MarginContrastiveLoss,
    PairMultiSimilarityLoss,
)

OWN_LOSSES["divamargin"] = DivaMarginLoss

__all__ = [
    "AdversarialDecorrelation",
    "AllTripletsMarginLoss",
    "CosineContrastiveLoss",
    "DaNCELoss",
    "DivaMarginLoss",
    "GradientReversal",
    "MarginContrastiveLoss",
    "PairMultiSimilarityLoss",
    "coactivation",
    "dance_weights",
    "reverse_gradient",
]

"""deepmetric's own losses (PML call contract: ``loss(embeddings, labels, indices_tuple=None)``)."""

from ..registry import OWN_LOSSES
from .gradient_reversal import GradientReversal, reverse_gradient
from .margin import DivaMarginLoss

OWN_LOSSES["divamargin"] = DivaMarginLoss

__all__ = ["DivaMarginLoss", "GradientReversal", "reverse_gradient"]

"""deepmetric's own losses. Those on `MetricLoss` follow PML's call contract,
``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``, and register by name in
`deepmetric.registry.LOSSES` at their definitions; DaNCE and the decorrelation are DiVA's parts with their own calls.
`memory`: the cross-batch memory (XBM) for any pair loss and miner, and `pair_loss`, a loss with its miner and memory.
"""

from .base import MetricLoss, check_inputs
from .dance import DaNCELoss, dance_weights
from .decorrelation import AdversarialDecorrelation, coactivation
from .geometry import log_inverse_sphere_density
from .gradient_reversal import GradientReversal, reverse_gradient
from .margin import DivaMarginLoss
from .memory import CrossBatchMemory, mined_loss, pair_loss, takes_reference_set
from .reference_pairs import (
    AllTripletsMarginLoss,
    CosineContrastiveLoss,
    MarginContrastiveLoss,
    PairMultiSimilarityLoss,
)

__all__ = [
    "AdversarialDecorrelation",
    "AllTripletsMarginLoss",
    "CosineContrastiveLoss",
    "CrossBatchMemory",
    "DaNCELoss",
    "DivaMarginLoss",
    "GradientReversal",
    "MarginContrastiveLoss",
    "MetricLoss",
    "PairMultiSimilarityLoss",
    "check_inputs",
    "coactivation",
    "dance_weights",
    "log_inverse_sphere_density",
    "mined_loss",
    "pair_loss",
    "reverse_gradient",
    "takes_reference_set",
]

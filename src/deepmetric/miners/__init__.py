"""deepmetric's miners, on `Miner`: ``miner(embeddings, labels, ref_emb=None, ref_labels=None, generator=None)``
(PML's call contract plus a generator), registered by name in `deepmetric.registry.MINERS` at their definitions."""

from .base import Miner
from .diva import DistanceWeightedTripletMiner, IntraClassTripletMiner, SharedTripletMiner
from .easy_positive import NEGATIVE_STRATEGIES, EasyPositiveMiner

__all__ = [
    "NEGATIVE_STRATEGIES",
    "DistanceWeightedTripletMiner",
    "EasyPositiveMiner",
    "IntraClassTripletMiner",
    "Miner",
    "SharedTripletMiner",
]

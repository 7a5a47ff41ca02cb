"""deepmetric's miners (PML call contract: ``miner(embeddings, labels, ref_emb=None, ref_labels=None)``)."""

from ..registry import OWN_MINERS
from .diva import DistanceWeightedTripletMiner, IntraClassTripletMiner, SharedTripletMiner
from .easy_positive import NEGATIVE_STRATEGIES, EasyPositiveMiner

OWN_MINERS["easypositive"] = EasyPositiveMiner
OWN_MINERS["divadistanceweighted"] = DistanceWeightedTripletMiner
OWN_MINERS["divashared"] = SharedTripletMiner
OWN_MINERS["divaintra"] = IntraClassTripletMiner

__all__ = [
    "NEGATIVE_STRATEGIES",
    "DistanceWeightedTripletMiner",
    "EasyPositiveMiner",
    "IntraClassTripletMiner",
    "SharedTripletMiner",
]

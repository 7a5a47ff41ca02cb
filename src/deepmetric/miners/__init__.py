"""deepmetric's miners (PML call contract: ``miner(embeddings, labels, ref_emb=None, ref_labels=None)``)."""

from ..registry import OWN_MINERS
from .easy_positive import NEGATIVE_STRATEGIES, EasyPositiveMiner

OWN_MINERS["easypositive"] = EasyPositiveMiner

__all__ = ["NEGATIVE_STRATEGIES", "EasyPositiveMiner"]

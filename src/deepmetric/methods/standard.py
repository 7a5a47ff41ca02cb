"""The ``standard`` method: one loss (any of PML's or ours) with an optional miner, on one embedding.

Covers every pair, triplet, proxy and classification loss; EPS is a miner choice. The loss's own parameters
(proxies, class weights, learnable margins) join the optimizer in their own group with ``loss.lr_mult``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..distributed import gather, gather_for_loss
from ..miners import EasyPositiveMiner
from ..models import Embedder
from ..precision import full_precision
from ..registry import METHODS, build_loss, build_miner
from .base import Method


@METHODS.register("standard")
class StandardMethod(Method):
    def __init__(self, model: Embedder, loss: nn.Module, miner: nn.Module | None = None,
                 loss_lr_mult: float = 1.0, loss_weight_decay: float | None = None):  # fmt: skip
        super().__init__(model)
        if len(model.heads) != 1:
            raise ValueError(f"the standard method uses one embedding head, the model has {list(model.heads)}")
        self.loss, self.miner = loss, miner
        self.loss_lr_mult, self.loss_weight_decay = loss_lr_mult, loss_weight_decay

    @classmethod
    def from_config(cls, cfg, options, model: Embedder, num_classes: int) -> StandardMethod:
        loss = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes,
                          embedding_size=model.dims["embedding"])  # fmt: skip
        miner = build_miner(cfg.miner.name, cfg.miner.params)
        if isinstance(miner, EasyPositiveMiner) and cfg.data.samples_per_class < 3:
            warnings.warn(
                f"{type(miner).__name__} with data.samples_per_class={cfg.data.samples_per_class}: with fewer than 3 "
                "samples per class the nearest positive is the only positive, so EPS cannot change anything; use 4 "
                "or more",
                stacklevel=2,
            )
        return cls(model, loss, miner, cfg.loss.lr_mult, cfg.loss.weight_decay)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        embeddings = full_precision(next(iter(self.model(batch["views"][0]).values())))  # loss math in ≥ float32
        embeddings, labels = gather_for_loss(embeddings), gather(batch["label"])  # global batch under torchrun
        with torch.autocast(embeddings.device.type, enabled=False):
            pairs = self.miner(embeddings, labels) if self.miner is not None else None
            loss = self.loss(embeddings, labels, pairs) if pairs is not None else self.loss(embeddings, labels)
        return {"loss": loss}

    def extra_parameters(self):
        params = [p for p in self.loss.parameters() if p.requires_grad]
        if not params:
            return []
        options = {"lr_mult": self.loss_lr_mult}
        if self.loss_weight_decay is not None:
            options["weight_decay"] = self.loss_weight_decay
        return [("loss", params, options)]

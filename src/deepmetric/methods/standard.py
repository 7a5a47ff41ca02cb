"""The ``standard`` method: one loss (any of PML's or ours) with an optional miner, on one embedding.

Covers every pair, triplet, proxy and classification loss; EPS is a miner choice. A pair loss may also take a
cross-batch memory (``memory``: XBM, `deepmetric.losses.memory`), whose queue of past global batches is in the state
dict. The loss's own parameters (proxies, class weights, learnable margins) join the optimizer in their own group
with ``loss.lr_mult``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..distributed import gather, gather_for_loss
from ..losses import CrossBatchMemory, pair_loss
from ..models import Embedder
from ..precision import full_precision
from ..registry import METHODS, build_loss
from .base import Method
from .pairs import build_memory, build_pair_miner, check_pair_config


@METHODS.register("standard")
class StandardMethod(Method):
    def __init__(self, model: Embedder, loss: nn.Module, miner: nn.Module | None = None,
                 loss_lr_mult: float = 1.0, loss_weight_decay: float | None = None,
                 memory: CrossBatchMemory | None = None):  # fmt: skip
        super().__init__(model)
        if len(model.heads) != 1:
            raise ValueError(f"the standard method uses one embedding head, the model has {list(model.heads)}")
        self.loss, self.miner, self.memory = loss, miner, memory
        self.loss_lr_mult, self.loss_weight_decay = loss_lr_mult, loss_weight_decay

    @classmethod
    def check_config(cls, cfg, options) -> None:
        check_pair_config(cfg)

    @classmethod
    def from_config(cls, cfg, options, model: Embedder, num_classes: int) -> StandardMethod:
        dim = model.dims["embedding"]
        loss = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes, embedding_size=dim)
        miner = build_pair_miner(cfg.miner.name, cfg.miner.params, cfg.data.samples_per_class)
        return cls(model, loss, miner, cfg.loss.lr_mult, cfg.loss.weight_decay, build_memory(cfg.memory, dim))

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        embeddings = full_precision(next(iter(self.model(batch["views"][0]).values())))  # loss math in ≥ float32
        embeddings, labels = gather_for_loss(embeddings), gather(batch["label"])  # global batch under torchrun
        with torch.autocast(embeddings.device.type, enabled=False):
            loss, parts = pair_loss(self.loss, self.miner, embeddings, labels, self.memory)
        return {"loss": loss, **{f"{k}_loss": v for k, v in parts.items()}}

    def on_step_end(self, step: int) -> None:
        if self.memory is not None:
            self.memory.step_end(step)

    def extra_parameters(self):
        params = [p for p in self.loss.parameters() if p.requires_grad]
        if not params:
            return []
        options = {"lr_mult": self.loss_lr_mult}
        if self.loss_weight_decay is not None:
            options["weight_decay"] = self.loss_weight_decay
        return [("loss", params, options)]

"""The Method protocol: the seam that keeps the trainer generic (DESIGN §4).

A method owns the model and its losses. The trainer calls ``training_step`` with a batch whose ``views`` are the
augmented images (``num_views`` of them) and whose ``label`` are contiguous training labels 0..C−1, optimises the
groups of ``param_groups``, calls ``on_train_start`` before training, ``on_step_end`` after each optimizer step and
``on_validation_end`` after each validation, and evaluates with ``embed``. ``state_dict`` must carry everything needed
to resume exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models import Embedder


class Method(nn.Module):
    """Base class; subclasses implement ``training_step`` and may extend the hooks."""

    num_views: int = 1

    def __init__(self, model: Embedder):
        super().__init__()
        self.model = model

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"loss": total, <named parts for logging>: ...}``. Under torchrun, compute losses on the global batch:
        `deepmetric.distributed.gather_for_loss` (embeddings) and `gather` (labels)."""
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """= ``training_step``, so that DistributedDataParallel can wrap the method."""
        return self.training_step(batch)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time embedding (B × D) of preprocessed images."""
        out = self.model(images)
        return next(iter(out.values())) if len(out) == 1 else torch.cat(list(out.values()), dim=1)

    def extra_parameters(self) -> list[tuple[str, list[nn.Parameter], dict]]:
        """Parameters outside the model (loss proxies, learnable margins): ``[(name, params, group options)]``;
        the options may hold ``lr_mult`` (relative to the base learning rate) and ``weight_decay``."""
        return []

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float = 1.0) -> list[dict]:
        """Backbone, heads and every extra parameter set in its own named group; nothing trainable is left out."""
        groups = [
            {"name": "backbone", "params": [p for p in self.model.backbone.parameters() if p.requires_grad],
             "lr": lr, "weight_decay": weight_decay},
            {"name": "heads", "params": [p for p in self.model.heads.parameters() if p.requires_grad],
             "lr": lr * head_lr_mult, "weight_decay": weight_decay},
        ]  # fmt: skip
        for name, params, options in self.extra_parameters():
            options = dict(options)
            lr_mult = options.pop("lr_mult", 1.0)
            groups.append({"name": name, "params": [p for p in params if p.requires_grad], "lr": lr * lr_mult,
                           "weight_decay": weight_decay, **options})  # fmt: skip
        groups = [g for g in groups if g["params"]]
        check_param_groups(self, groups)
        return groups

    def on_train_start(self, trainer) -> None:
        """Before the first step of ``fit`` (also after a resume: check your own state), e.g. CCP's first proxies."""

    def on_step_end(self, step: int) -> None:
        """After every optimizer step (EMA updates, queues)."""

    def on_validation_end(self, metrics: dict, trainer) -> None:
        """After every validation (e.g. stage control)."""


def check_param_groups(module: nn.Module, groups: list[dict]) -> None:
    """Every trainable parameter of ``module`` in exactly one group: the missing-proxies bug made impossible."""
    seen: dict[int, str] = {}
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise RuntimeError(f"parameter in two optimizer groups: {seen[id(p)]} and {g['name']}")
            seen[id(p)] = g["name"]
    missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise RuntimeError(f"trainable parameters left out of the optimizer: {missing[:10]}")

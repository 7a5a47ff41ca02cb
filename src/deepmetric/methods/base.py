"""The Method seam: what a method declares to the rest of deepmetric, and what the run offers its hooks.

A method owns the model and its losses. It **declares** (class attributes and classmethods, read before any data
is loaded): ``Options``, the dataclass of its typed ``method.options`` (validated when the config loads); ``heads``,
the embedding heads it trains; ``num_views``, the augmented views per training image; ``normalize_embeddings``,
whether evaluation L2-normalises its test-time embeddings before ranking; ``from_config``, how it is built;
``check_config``, the combinations of the whole config it accepts (a memory, a miner), checked at load time.

The trainer **calls** ``training_step`` with a batch whose ``views`` are the augmented images and whose ``label``
are contiguous training labels 0..C−1, optimises the groups of ``param_groups``, and calls the hooks:
``on_train_start(ctx)`` before training (also after a resume), ``on_step_end(step)`` after each optimizer step,
``on_validation_end(metrics, ctx)`` after each validation. Evaluation uses ``test_embedding`` (one embedding and,
for methods with several heads, each head for per-head scoring). ``state_dict`` carries everything needed to
resume exactly. The hooks see the run only through `MethodContext`, never the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..models import Embedder


@dataclass
class NoOptions:
    """A method without ``method.options``."""


class MethodContext:
    """The run as a method's hooks see it.

    Attributes:
        step: optimizer steps taken so far. optimizer: the run's optimizer (e.g. to reset a parameter's state).
        train_labels: contiguous labels of the training images, by dataset position. seed: the run's seed.
        select_key: ``metrics → the selection metric's key`` (``train.select_metric``, resolved in ``metrics``).
        record: ``(record, text=None)`` → an event into ``log.jsonl`` and a progress line.
        progress: ``(iterable, description)`` → the iterable with a progress bar (unless the run is quiet).
        embed_training: ``(positions, fn, seed)`` → ``fn`` of the training images at ``positions`` (dataset
            positions), with the training augmentation seeded by ``seed``, concatenated in order; under torchrun every
            process computes part of every batch and all get the whole result. ``fn`` runs without autograd; the
            caller sets the model's mode.
    """

    def __init__(self, *, optimizer, train_labels: np.ndarray, seed: int, select_key: Callable[[dict], str],
                 record: Callable[..., None], progress: Callable[[Iterable, str], Iterable],
                 embed_training: Callable[..., torch.Tensor], step: int = 0):  # fmt: skip
        self.optimizer, self.train_labels, self.seed, self.step = optimizer, train_labels, seed, step
        self.select_key, self.record, self.progress, self.embed_training = select_key, record, progress, embed_training


class Method(nn.Module):
    """Base class; subclasses implement ``training_step`` and may extend the hooks and declarations."""

    Options: type = NoOptions
    num_views: int = 1
    normalize_embeddings: bool = True

    def __init__(self, model: Embedder):
        super().__init__()
        self.model = model

    # ----------------------------------------------------------------------------------------- declarations
    @classmethod
    def heads(cls, options: Any, embedding_dim: int) -> dict[str, int]:
        """The embedding heads the method trains, ``{name: dim}``: one ``embedding`` head by default."""
        return {"embedding": embedding_dim}

    @classmethod
    def check_config(cls, cfg, options: Any) -> None:
        """At config load, before any data: a `ValueError` naming the key and what to do for a combination of the
        config's sections that this method cannot use. By default a method takes no cross-batch memory."""
        if cfg.memory.size:
            raise ValueError(f"memory.size={cfg.memory.size}: method {cfg.method.name!r} has no pair loss to give a "
                             "cross-batch memory; set memory.size=0")  # fmt: skip

    @classmethod
    def from_config(cls, cfg, options: Any, model: Embedder, num_classes: int) -> Method:
        """The method for a run's config (its ``loss`` / ``miner`` sections as the method uses them)."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"loss": total, <named parts for logging>: ...}``. Under torchrun, compute losses on the global batch:
        `deepmetric.distributed.gather_for_loss` (embeddings) and `gather` (labels)."""
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """= ``training_step``, so that DistributedDataParallel can wrap the method."""
        return self.training_step(batch)

    # ----------------------------------------------------------------------------------------- test time
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time embedding (B × D) of preprocessed images."""
        out = self.model(images)
        return next(iter(out.values())) if len(out) == 1 else torch.cat(list(out.values()), dim=1)

    def test_embedding(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the test-time embedding, ``{head: its embedding}`` for per-head scoring — empty for one head), from one
        forward pass."""
        return self.embed(images), {}

    # ------------------------------------------------------------------------------------------ optimizer
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

    # ---------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, ctx: MethodContext) -> None:
        """Before the first step of a run (also after a resume: check your own state), e.g. CCP's first proxies."""

    def on_step_end(self, step: int) -> None:
        """After every optimizer step (EMA updates, queues)."""

    def on_validation_end(self, metrics: dict, ctx: MethodContext) -> None:
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

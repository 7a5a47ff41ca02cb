"""What the methods with a pair loss share: building the loss's miner and cross-batch memory from a config, and the
load-time checks of those combinations (docs/combining.md).

A pair loss ℓ (any of PML's pair losses or deepmetric's) takes an optional miner (EPS's ``easy_positive`` among them)
and an optional cross-batch memory (`deepmetric.losses.memory`); `deepmetric.losses.pair_loss` composes the three.
The standard method (EPS included) and CCP's in-batch term read them from the config's top-level ``loss``, ``miner``
and ``memory``; DiVA from each task's ``method.options.<task>``.
"""

from __future__ import annotations

import warnings

import torch.nn as nn

from ..losses import CrossBatchMemory, MetricLoss
from ..losses.memory import check_memory_loss
from ..miners import EasyPositiveMiner
from ..registry import UnknownNameError, build_miner, resolve


def no_miner(name: str | None) -> bool:
    return name is None or name in ("", "none")


def build_memory(memory, dim: int) -> CrossBatchMemory | None:
    """The cross-batch memory a config section asks for (None for ``size`` 0)."""
    return CrossBatchMemory.from_config(memory, dim)


def build_pair_miner(name: str | None, params: dict, samples_per_class: int | None = None,
                     key: str = "miner.name") -> nn.Module | None:  # fmt: skip
    """The miner ``name`` (None for none); a warning when EPS cannot change anything at ``samples_per_class``."""
    miner = build_miner(name, params)
    if isinstance(miner, EasyPositiveMiner) and samples_per_class is not None and samples_per_class < 3:
        warnings.warn(
            f"{key}={name!r} with data.samples_per_class={samples_per_class}: with fewer than 3 samples per class the "
            "nearest positive is the only positive, so EPS cannot change anything; use 4 or more",
            stacklevel=3,
        )
    return miner


def check_pair_config(cfg) -> None:
    """The top-level ``loss`` / ``miner`` / ``memory`` of a pair-loss method: a memory needs a pair-based loss; a
    miner a loss that takes one. Unknown loss and miner names are named here, before any data is read."""
    for key, kind, name in (("loss.name", "loss", cfg.loss.name), ("miner.name", "miner", cfg.miner.name)):
        if kind == "miner" and no_miner(name):
            continue
        try:
            resolve(kind, name)
        except UnknownNameError as e:
            raise ValueError(f"{key}={name!r}: {e}") from None
    if cfg.memory.size:
        check_memory_loss(cfg.loss.name, "memory")
    if not no_miner(cfg.miner.name):
        loss = resolve("loss", cfg.loss.name)
        if isinstance(loss, type) and issubclass(loss, MetricLoss) and loss.indices is None:
            raise ValueError(
                f"miner.name={cfg.miner.name!r}: loss.name={cfg.loss.name!r} ({loss.__name__}) uses every pair and "
                "takes no miner; remove miner.name or choose a pair loss that takes one"
            )

"""Names → losses and miners: deepmetric's own first, then pytorch-metric-learning's.

A name matches a class case- and underscore-insensitively, with or without its ``Loss`` / ``Miner`` suffix:
``triplet_margin``, ``TripletMargin`` and ``TripletMarginLoss`` all name PML's ``TripletMarginLoss``. An unknown
name is an error listing the closest valid names. Constructor arguments ``num_classes`` and ``embedding_size`` are
filled from the data and model when the class requires them (or when a config sets them to ``auto``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

# deepmetric's own losses and miners register here: {canonical name: class}
OWN_LOSSES: dict[str, type] = {}
OWN_MINERS: dict[str, type] = {}


def _canonical(name: str, suffix: str) -> str:
    key = name.replace("_", "").replace("-", "").lower()
    return key[: -len(suffix)] if key.endswith(suffix) and key != suffix else key


def _pml_classes(kind: str) -> dict[str, type]:
    if kind == "loss":
        from pytorch_metric_learning import losses as module
        from pytorch_metric_learning.losses import BaseMetricLossFunction as base
    else:
        from pytorch_metric_learning import miners as module
        from pytorch_metric_learning.miners import BaseMiner as base
    abstract = {"BaseMetricLossFunction", "BaseMiner", "GenericPairLoss", "BaseLossWrapper", "MultipleLosses",
                "EmbeddingsAlreadyPackagedAsTriplets", "CrossBatchMemory", "SelfSupervisedLoss"}  # fmt: skip
    return {
        _canonical(n, kind): c
        for n, c in vars(module).items()
        if isinstance(c, type) and issubclass(c, base) and n not in abstract
    }


def available(kind: str) -> list[str]:
    """Every valid name of ``kind`` (``loss`` or ``miner``), canonical form."""
    from . import losses, miners  # noqa: F401

    own = OWN_LOSSES if kind == "loss" else OWN_MINERS
    return sorted(set(own) | set(_pml_classes(kind)))


def resolve(kind: str, name: str) -> type:
    from . import losses, miners  # noqa: F401  (register deepmetric's own losses and miners)

    own = OWN_LOSSES if kind == "loss" else OWN_MINERS
    key = _canonical(name, kind)
    if key in own:
        return own[key]
    classes = _pml_classes(kind)
    if key in classes:
        return classes[key]
    close = difflib.get_close_matches(key, available(kind), n=4, cutoff=0.5)
    raise ValueError(f"unknown {kind} {name!r}" + (f"; closest: {close}" if close else f"; valid: {available(kind)}"))


def _accepted_arguments(cls: type) -> list[str]:
    """Named constructor arguments of ``cls`` and of the bases its ``**kwargs`` are forwarded to."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _construct(cls: type, params: Mapping[str, Any], auto: Mapping[str, Any], what: str) -> nn.Module:
    params = dict(params)
    signature = inspect.signature(cls.__init__)
    for key, value in auto.items():
        p = signature.parameters.get(key)
        if params.get(key) == "auto" or (p is not None and p.default is inspect.Parameter.empty and key not in params):
            params[key] = value
    valid = _accepted_arguments(cls)
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ValueError(f"{what} {cls.__name__} has no parameter(s) {unknown}; valid: {valid}")
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"{what} {cls.__name__}({params}): {e}") from None


def build_loss(
    name: str, params: Mapping[str, Any] | None = None, *, num_classes: int, embedding_size: int
) -> nn.Module:
    return _construct(
        resolve("loss", name), params or {}, {"num_classes": num_classes, "embedding_size": embedding_size}, "loss"
    )


def build_miner(name: str | None, params: Mapping[str, Any] | None = None) -> nn.Module | None:
    if name is None or name in ("", "none"):
        if params:
            raise ValueError(f"miner.params {dict(params)} given without a miner.name")
        return None
    return _construct(resolve("miner", name), params or {}, {}, "miner")

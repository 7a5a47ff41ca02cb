"""Registries (names → objects, each registered where it is defined, as timm's models) and the lookup of losses and
miners by name.

A definition registers itself: ``@DATASETS.register("cub200")`` on the loader, ``@LOSSES.register("diva_margin")``
on the class. A kind's package imports its modules (so they register); the modules import the registry from here.
This module imports nothing from deepmetric: a registry whose definitions live in a package names it
(``locations``) and imports it by name before its first lookup, so ``DATASETS.get("cub200")`` works on its own.

Losses and miners: a name matches a class case- and underscore-insensitively, with or without its ``Loss`` /
``Miner`` suffix: ``triplet_margin``, ``TripletMargin`` and ``TripletMarginLoss`` all name PML's
``TripletMarginLoss``. deepmetric's own (`LOSSES`, `MINERS`) come first, then pytorch-metric-learning's classes. An
unknown name is an error listing the closest valid names. Constructor arguments ``num_classes`` and
``embedding_size`` are filled from the data and model when the class requires them (or when a config sets them to
``auto``).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch.nn as nn

_MISSING = object()


class UnknownNameError(ValueError):
    """A name no entry of a registry has; the message names the kind, the name and the closest valid names."""

    def __init__(self, message: str, kind: str, name: Any, closest: list[str]):
        super().__init__(message)
        self.kind, self.name, self.closest = kind, name, closest


class Registry:
    """Names → objects of one kind (``kind`` names it in errors), each registered at its definition.

    ``register(*names)`` is a decorator; registering a name twice is an error. ``get(name)`` returns the object or
    raises `UnknownNameError` with the closest valid names; ``names()``, ``in``, iteration, ``items()`` and
    ``registry[name]`` work as on a read-only dict. ``normalize`` maps a name to its key (losses: case- and
    underscore-insensitive); a name registered with ``prefix=True`` matches every name that starts with it
    (``timm:`` → ``timm:resnet50``) and is listed as ``timm:<name>``. ``locations``: modules imported, by name,
    before the first lookup, so that their definitions have registered. Item assignment replaces an entry without
    the duplicate check (for tests, e.g. ``monkeypatch.setitem``); definitions use ``register``.
    """

    def __init__(self, kind: str, *, normalize: Callable[[str], str] | None = None, locations: tuple[str, ...] = ()):
        self.kind = kind
        self._normalize = normalize or (lambda name: name)
        self._locations = tuple(locations)
        self._loaded = not self._locations
        self._entries: dict[str, tuple[Any, bool]] = {}  # key → (object, is a prefix)

    def register(self, *names: str, prefix: bool = False) -> Callable[[Any], Any]:
        """``@registry.register("name", "alias", ...)``: the decorated object under every name, returned unchanged."""
        if not names or not all(isinstance(n, str) and n for n in names):
            raise TypeError(f"register {self.kind}s under one or more non-empty names, got {names!r}")

        def add(obj):
            self._load()  # a name taken by a definition is taken whatever was imported first
            for name in names:
                key = self._normalize(name)
                if key in self._entries:
                    raise ValueError(
                        f"{self.kind} {name!r} is registered twice: {_describe(self._entries[key][0])} and "
                        f"{_describe(obj)}"
                    )
                self._entries[key] = (obj, prefix)
            return obj

        return add

    def get(self, name: str, default: Any = _MISSING) -> Any:
        """The object registered as ``name``; ``default`` if given and there is none, else `UnknownNameError`."""
        self._load()
        if isinstance(name, str):
            key = self._normalize(name)
            if key in self._entries:
                return self._entries[key][0]
            for prefix, (obj, is_prefix) in self._entries.items():
                if is_prefix and key.startswith(prefix):
                    return obj
        if default is not _MISSING:
            return default
        raise self.unknown(name)

    def unknown(self, name: Any) -> UnknownNameError:
        """The error for a name that is not registered: the kind, the name, the closest valid names."""
        valid = sorted(self.names())
        close = difflib.get_close_matches(name, valid, n=3) if isinstance(name, str) else []
        hint = f"did you mean {close}? " if close else ""
        return UnknownNameError(f"unknown {self.kind} {name!r}; {hint}valid: {valid}", self.kind, name, close)

    def names(self) -> tuple[str, ...]:
        """Every registered name (keys, prefixes as ``prefix<name>``), in registration order."""
        self._load()
        return tuple(f"{key}<name>" if is_prefix else key for key, (_, is_prefix) in self._entries.items())

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(self.names(), (obj for obj, _ in self._entries.values()), strict=True))

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        self._entries[self._normalize(name)] = (obj, False)

    def __delitem__(self, name: str) -> None:
        key = self._normalize(name)
        if key not in self._entries:
            raise KeyError(name)
        del self._entries[key]

    def __contains__(self, name: object) -> bool:
        return self.get(name, None) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self.names())})"

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first, so that a lookup during the import does not import again
        try:
            for module in self._locations:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _canonical(name: str, suffix: str) -> str:
    key = name.replace("_", "").replace("-", "").lower()
    return key[: -len(suffix)] if key.endswith(suffix) and key != suffix else key


# deepmetric's own losses and miners register at their definitions; the dataset loaders at theirs
LOSSES = Registry("loss", normalize=functools.partial(_canonical, suffix="loss"), locations=("deepmetric.losses",))
MINERS = Registry("miner", normalize=functools.partial(_canonical, suffix="miner"), locations=("deepmetric.miners",))
DATASETS = Registry("dataset", locations=("deepmetric.data",))
METHODS = Registry("method", locations=("deepmetric.methods",))


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


def _own(kind: str) -> Registry:
    return LOSSES if kind == "loss" else MINERS


def available(kind: str) -> list[str]:
    """Every valid name of ``kind`` (``loss`` or ``miner``), canonical form."""
    return sorted(set(_own(kind).names()) | set(_pml_classes(kind)))


def resolve(kind: str, name: str) -> type:
    """The class ``name`` names: deepmetric's own ``kind`` first, then PML's; `UnknownNameError` if neither."""
    own = _own(kind).get(name, None)
    if own is not None:
        return own
    key = _canonical(name, kind)
    classes = _pml_classes(kind)
    if key in classes:
        return classes[key]
    valid = available(kind)
    close = difflib.get_close_matches(key, valid, n=4, cutoff=0.5)
    message = f"unknown {kind} {name!r}" + (f"; closest: {close}" if close else f"; valid: {valid}")
    raise UnknownNameError(message, kind, name, close)


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

"""Method names → builders. The trainer asks here; it never names a method itself."""

from __future__ import annotations

import difflib
import warnings

from ..registry import build_loss, build_miner
from .standard import StandardMethod


def _standard(cfg, model, num_classes):
    if cfg.method.options:
        raise ValueError(f"method 'standard' takes no method.options (got {sorted(cfg.method.options)})")
    loss = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes, embedding_size=model.dims["embedding"])
    miner = build_miner(cfg.miner.name, cfg.miner.params)
    from ..miners import EasyPositiveMiner

    if isinstance(miner, EasyPositiveMiner) and cfg.data.samples_per_class < 3:
        warnings.warn(
            f"EPS with data.samples_per_class={cfg.data.samples_per_class}: with fewer than 3 samples per class the "
            "nearest positive is the only positive, so EPS cannot change anything; use 4 or more",
            stacklevel=2,
        )
    return StandardMethod(model, loss, miner, cfg.loss.lr_mult, cfg.loss.weight_decay)


def _diva(cfg, model, num_classes):
    from .diva import DivaMethod

    options = dict(cfg.method.options)
    if "decorrelation" in options:
        options["decorrelation"] = [tuple(p) for p in options["decorrelation"]]
    try:
        return DivaMethod(model, num_classes, **options)
    except TypeError as e:
        raise ValueError(f"method.options for diva: {e}") from None


def _ccp(cfg, model, num_classes):
    from .ccp import CCPMethod

    if cfg.miner.name not in (None, "", "none"):
        raise ValueError(f"method 'ccp' uses every (sample, proxy) pair; remove miner.name={cfg.miner.name!r}")
    loss = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes, embedding_size=model.dims["embedding"])
    try:
        return CCPMethod(model, num_classes, loss, seed=cfg.train.seed, **cfg.method.options)
    except TypeError as e:
        raise ValueError(f"method.options for ccp: {e}") from None


METHODS = {"standard": _standard, "diva": _diva, "ccp": _ccp}


def heads(cfg) -> dict[str, int]:
    """The embedding heads the method trains: one for ``standard``, DiVA's four (each model.embedding_dim)."""
    if cfg.method.name == "diva":
        from .diva import HEADS

        return dict.fromkeys(HEADS, cfg.model.embedding_dim)
    return {"embedding": cfg.model.embedding_dim}


def build(cfg, model, num_classes):
    name = cfg.method.name
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=3)
        raise ValueError(
            f"unknown method {name!r}; valid: {sorted(METHODS)}" + (f"; closest: {close}" if close else "")
        )
    return METHODS[name](cfg, model, num_classes)

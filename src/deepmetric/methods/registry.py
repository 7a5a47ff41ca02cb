"""Methods by name, their typed options and their heads: what the rest of deepmetric asks of a method's name.

Each method registers at its definition (``@METHODS.register("diva")``); nothing outside ``methods/`` names one.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..registry import METHODS
from .base import Method


def method_class(name: str) -> type[Method]:
    """The registered method ``name`` (an error naming the closest valid names otherwise)."""
    return METHODS.get(name)


def method_options(cfg) -> Any:
    """``cfg.method.options`` as the method's typed ``Options`` dataclass: an unknown key or a wrong type is an error
    naming ``method.options.<key>``, the value and the valid keys (checked when the config loads, before any data)."""
    cls = method_class(cfg.method.name)
    given = dict(cfg.method.options or {})
    valid = [f.name for f in fields(cls.Options)]
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = f"valid: {valid}" if valid else f"method {cfg.method.name!r} takes no options"
            raise ValueError(f"method.options.{key}: unknown option of method {cfg.method.name!r}{hint} ({listing})")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls.Options), given)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        message = str(e).splitlines()[0]
        raise ValueError(f"method.options.{key}: {message}") from None
    try:
        return OmegaConf.to_object(typed)  # runs the options' own value checks (__post_init__)
    except (ValueError, OmegaConfBaseException) as e:
        message = str(e).splitlines()[0]
        raise ValueError(f"method.options of {cfg.method.name!r}: {message}") from None


def check_method_config(cfg) -> Any:
    """The typed options (`method_options`), and the method's own check of the whole config (``check_config``: a
    memory, a miner, combinations that make no sense), at load time; a `ValueError` naming the key otherwise."""
    options = method_options(cfg)
    method_class(cfg.method.name).check_config(cfg, options)
    return options


def method_heads(cfg) -> dict[str, int]:
    """The embedding heads the configured method trains, ``{name: dim}``."""
    return method_class(cfg.method.name).heads(method_options(cfg), cfg.model.embedding_dim)


def method_from_config(cfg, model, num_classes: int) -> Method:
    """The configured method around ``model`` (built with `method_heads`)."""
    cls = method_class(cfg.method.name)
    return cls.from_config(cfg, method_options(cfg), model, num_classes)

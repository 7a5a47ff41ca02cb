"""The registered names a config may choose from, for validation: ``choices()`` → ``{"optim.name": (...), ...}``.

The registries are imported when ``choices()`` is called, not when this module is: importing `deepmetric.training`
imports the trainer, which imports the config, so the config calls ``choices()`` at validation time, not at its own
import.
"""

from __future__ import annotations


def registries() -> dict:
    """The registry behind each config key that names a registered thing (``registry.get(value)`` validates)."""
    from .data import DATASETS
    from .models.backbones import TRUNKS
    from .training.optim import OPTIMIZERS
    from .training.schedule import SCHEDULES

    return {"optim.name": OPTIMIZERS, "schedule.name": SCHEDULES, "data.name": DATASETS, "model.backbone": TRUNKS}


def choices() -> dict[str, tuple[str, ...]]:
    """Registered names by config key. ``model.backbone`` lists ``timm:<name>`` for the ``timm:`` prefix, which
    takes any timm model name: test a value with ``value in TRUNKS`` (`deepmetric.models.backbones`), or against the
    part before ``:``."""
    return {key: registry.names() for key, registry in registries().items()}

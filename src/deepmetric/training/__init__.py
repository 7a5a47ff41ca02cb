"""Training engine: the trainer, checkpoints, schedules and the evaluation runner."""

from .trainer import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "Trainer"]

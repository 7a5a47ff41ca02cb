"""Training engine: the trainer, checkpoints, schedules and the evaluation runner."""

from .interrupts import TrainingInterrupted
from .numerics import NonFiniteLossError
from .trainer import RunExistsError, Trainer

__all__ = ["NonFiniteLossError", "RunExistsError", "Trainer", "TrainingInterrupted"]

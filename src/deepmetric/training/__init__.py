"""Training engine: the trainer, checkpoints, schedules and the evaluation runner."""

from .interrupts import TrainingInterrupted
from .numerics import NonFiniteLossError
from .run_directory import RunExistsError
from .trainer import Trainer

__all__ = ["NonFiniteLossError", "RunExistsError", "Trainer", "TrainingInterrupted"]

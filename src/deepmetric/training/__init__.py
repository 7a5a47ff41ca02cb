"""Training engine: the trainer, checkpoints, schedules and the evaluation runner."""

from .trainer import NonFiniteLossError, RunExistsError, Trainer, TrainingInterrupted

__all__ = ["NonFiniteLossError", "RunExistsError", "Trainer", "TrainingInterrupted"]

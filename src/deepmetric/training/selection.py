"""Model selection and early stopping: which validation was best, and when to stop."""

from __future__ import annotations


def select_key(metrics: dict, name: str) -> str:
    """``name`` (``train.select_metric``) as a key of ``metrics``, also under the superclass protocol's ``fine/`` or
    ``coarse/`` prefix."""
    if name in metrics:
        return name
    for prefix in ("fine/", "coarse/"):
        if prefix + name in metrics:
            return prefix + name
    raise KeyError(f"train.select_metric={name!r} is not among the metrics {sorted(metrics)}")


class Selection:
    """Tracks the best validation (higher is better) and the evaluations since; ``patience`` stops early."""

    def __init__(self, metric: str, patience: int | None = None):
        self.metric, self.patience = metric, patience
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.best_metrics: dict = {}

    def key(self, metrics: dict) -> str:
        return select_key(metrics, self.metric)

    def update(self, metrics: dict, step: int) -> bool:
        """Record a validation at ``step``; True when it is the best so far."""
        value = metrics[self.key(metrics)]
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_step, self.evals_since_best = value, step, 0
            self.best_metrics = metrics
            return True
        self.evals_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_since_best >= self.patience

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_step": self.best_step, "evals_since_best": self.evals_since_best,
                "best_val_metrics": self.best_metrics}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.evals_since_best, self.best_metrics = state["evals_since_best"], state["best_val_metrics"]

"""deepmetric: deep metric learning (DiVA, EPS, CCP) on an exact, scalable training and evaluation stack."""

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Train a model; see `deepmetric.api.train`."""
    from .api import train as _train

    return _train(*args, **kwargs)


def load(run_dir, checkpoint: str = "best", device: str | None = None):
    """Load a trained run for inference: ``deepmetric.load(run_dir).embed(images)``; see `EmbeddingModel`."""
    from .retrieval import load as _load

    return _load(run_dir, checkpoint, device)


__all__ = ["__version__", "load", "train"]

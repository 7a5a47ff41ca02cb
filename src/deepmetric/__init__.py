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


def load_run(run_dir, checkpoint: str = "best", device: str | None = None):
    """A finished run's config and method with ``checkpoint``'s weights (evaluate / embed its splits); see
    `deepmetric.run.load_run`."""
    from .run import load_run as _load_run

    return _load_run(run_dir, checkpoint, device)


def load_exported(path):
    """An exported model (``deepmetric export``), checked against the hashes in its metadata before it runs:
    ``deepmetric.load_exported("model.onnx")(uint8_images)``; see `deepmetric.retrieval.export.load_exported`."""
    from .retrieval.export import load_exported as _load_exported

    return _load_exported(path)


__all__ = ["__version__", "load", "load_exported", "load_run", "train"]

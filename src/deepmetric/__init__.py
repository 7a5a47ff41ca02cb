"""deepmetric: deep metric learning (DiVA, EPS, CCP) on an exact, scalable training and evaluation stack."""

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Train a model; see `deepmetric.api.train`."""
    from .api import train as _train

    return _train(*args, **kwargs)


__all__ = ["__version__", "train"]

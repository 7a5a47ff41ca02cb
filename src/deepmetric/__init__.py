"""deepmetric: deep metric learning (DiVA, EPS, CCP) on an exact, scalable training and evaluation stack."""

__version__ = "0.1.0"

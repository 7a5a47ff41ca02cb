"""Methods: the Method seam (`base`), the registered methods, and what the run asks of a method's name."""

from ..registry import METHODS
from . import ccp, diva, standard  # noqa: F401  (each registers itself)
from .base import Method, MethodContext, NoOptions, check_param_groups
from .registry import check_method_config, method_class, method_from_config, method_heads, method_options
from .standard import StandardMethod

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "NoOptions",
    "StandardMethod",
    "check_method_config",
    "check_param_groups",
    "method_class",
    "method_from_config",
    "method_heads",
    "method_options",
]

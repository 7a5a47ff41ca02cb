"""Methods: the Method protocol and its implementations."""

from .base import Method, check_param_groups
from .standard import StandardMethod

__all__ = ["Method", "StandardMethod", "check_param_groups"]

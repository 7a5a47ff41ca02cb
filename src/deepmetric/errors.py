"""The project's error base: everything deepmetric raises about a user's input or a checked run-time condition.

The CLI prints such an error's message on one line and exits with its ``exit_code`` (2: bad input, 1: a run-time
condition such as a parity failure or a non-finite loss), without a traceback.
"""

from __future__ import annotations


class DeepMetricError(Exception):
    """Base of deepmetric's own errors."""

    exit_code = 2


class ConfigError(DeepMetricError, ValueError):
    """A configuration problem; the message names the key and the value."""


class RunError(DeepMetricError, RuntimeError):
    """A checked run-time condition (a failed parity check, a non-finite loss): exit status 1."""

    exit_code = 1

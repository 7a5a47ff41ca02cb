"""SIGINT / SIGTERM during training: the first one finishes the step under way, a checkpoint is written and the run
stops with `TrainingInterrupted` (exit status 130 / 143, the shell's 128 + signal number); a second one, or one
outside the training loop, stops at once. The handlers are installed only while training runs, in the main thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable

from ..errors import RunError


class TrainingInterrupted(RunError):
    """SIGINT or SIGTERM stopped training; the exit status is the shell's convention, 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Interrupts:
    """The signal state of one training session. ``announce(name)``: the line printed when a first signal is
    deferred (None: print nothing, e.g. on ranks other than 0); ``stopped_at_once(name)``: the message of a stop
    that cannot wait."""

    def __init__(self, announce: Callable[[str], str | None], stopped_at_once: Callable[[str], str]):
        self.announce, self.stopped_at_once = announce, stopped_at_once
        self.pending: int | None = None  # the first signal, waiting for the step's end
        self.deferring = False  # in the training loop: a first signal waits for the step's end

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.pending is None and self.deferring:
            self.pending = signum
            line = self.announce(name)
            if line:  # os.write: a handler must not re-enter a buffered print
                os.write(2, (line + "\n").encode())
            return
        raise TrainingInterrupted(self.stopped_at_once(name), signum)

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT and SIGTERM inside the block (main thread only); the previous handlers after it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

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


class StopAtStepEnd:
    """The training loop's side of the signals: the lines printed, and the stop after a step's end with a checkpoint.

    ``where()`` gives the loop's position: its step and its newest intact checkpoint ``(path, step)`` (or None);
    ``under_way`` is the step a deferred signal waits for (None: before the loop, in the baseline evaluation)."""

    def __init__(self, run_dir, where: Callable[[], tuple[int, tuple | None]], *, main: bool, world_size: int,
                 log_every: int):  # fmt: skip
        self.run_dir, self.where, self.main = run_dir, where, main
        self.world_size, self.log_every = world_size, log_every
        self.interrupts = Interrupts(self._announce, self._stopped_at_once)
        self.under_way: int | None = None

    def installed(self, deferring: bool = True):
        self.interrupts.deferring = deferring
        return self.interrupts.installed()

    def stop_deferring(self) -> None:
        """From now on (training done and saved) a signal stops at once."""
        self.interrupts.deferring = False

    def _announce(self, name: str) -> str | None:
        if self.main:
            what = f"step {self.under_way}" if self.under_way else "the baseline evaluation"
            return f"deepmetric: {name}: finishing {what}, then writing a checkpoint (send it again to stop at once)"
        return None

    def _stopped_at_once(self, name: str) -> str:
        step, saved = self.where()
        if saved and saved[1] == step:
            state = f"with the checkpoint of step {step} ({saved[0]})"
        elif saved:
            state = f"without a checkpoint of step {step} (the last is of step {saved[1]}: {saved[0]})"
        else:
            state = "before the first checkpoint"
        return f"{name}: stopped at once, {state}; continue with: deepmetric train --resume {self.run_dir}"

    def check(self, save_last: Callable[[], None]) -> None:
        """At a step's end: after a signal, write the checkpoint (``save_last``, unless this step has one) and raise
        `TrainingInterrupted`. Under torchrun the ranks agree at log steps (rank 0's signal counts; the host waits
        there anyway), so all stop after the same step."""
        from .. import distributed

        interrupts = self.interrupts
        signum = interrupts.pending
        step, saved = self.where()
        if self.world_size > 1:
            if step % self.log_every:
                return
            signum = interrupts.pending = distributed.broadcast_object(interrupts.pending if self.main else None)
        if signum is None:
            return
        interrupts.deferring = False  # a second signal while saving stops at once
        if saved is None or saved[1] != step:
            save_last()
            step, saved = self.where()
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: stopped after step {step} with a checkpoint ({saved[0]}); continue with: "
            f"deepmetric train --resume {self.run_dir}",
            signum,
        )

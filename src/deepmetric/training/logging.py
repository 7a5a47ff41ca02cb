"""A run's outputs while it trains: ``log.jsonl``, the trackers and the progress display (rank 0 only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .trackers import JsonLog, Tracker, build_trackers


class Progress:
    """A tqdm bar on a terminal; plain log lines when there is none or ``CI`` is set."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self.enabled = enabled
        self.plain = bool(os.environ.get("CI")) or not sys.stderr.isatty()
        if enabled and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)

    def update(self, info: dict, n: int = 1) -> None:
        if self.plain or not self.enabled:
            return
        self.bar.update(n)
        if info:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=False)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.plain:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.write(text)

    def close(self) -> None:
        if self.enabled and not self.plain:
            self.bar.close()


class RunLog:
    """Where the trainer's records go (`deepmetric.training.trackers`: ``log.jsonl`` always, TensorBoard and MLflow
    when asked for) and its messages; inert on processes other than rank 0.

    ``start_tracking`` opens the optional trackers for a session (before the baseline is scored), ``open`` starts the
    progress display, ``finish_tracking`` hands the trackers the run's final files, ``close`` ends them. An optional
    tracker that fails while the run trains is reported once and dropped (tracking never stops training);
    ``log.jsonl`` failing (a full disk) stops the run."""

    def __init__(self, run_dir: Path, *, main: bool, quiet: bool):
        self.main, self.quiet = main, quiet or not main
        self.json = JsonLog(Path(run_dir))
        self.path = self.json.path
        self.trackers: list[Tracker] = [self.json]
        self.progress: Progress | None = None

    @property
    def records(self) -> int:
        """Records in ``log.jsonl``: a checkpoint stores the count, a resume cuts the log back to it."""
        return self.json.records

    def start_tracking(self, cfg, resumed: bool) -> None:
        """Open the trackers ``cfg`` asks for (rank 0); a tracker that cannot start is an error before training."""
        if not self.main or len(self.trackers) > 1:
            return
        for tracker in build_trackers(cfg, self.path.parent):
            tracker.start(cfg, self.path.parent, resumed)
            self.trackers.append(tracker)

    def finish_tracking(self, metrics: dict) -> None:
        for tracker in list(self.trackers):
            self._call(tracker, "finish", self.path.parent, metrics)

    def open(self, total_steps: int, step: int) -> None:
        self.progress = Progress(total_steps, step, enabled=not self.quiet)

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def close(self) -> None:
        self.close_progress()
        for tracker in self.trackers[1:]:
            try:
                tracker.close()
            except Exception as e:  # closing a tracker must not hide the run's own outcome
                self.warn(f"{type(tracker).__name__} did not close cleanly: {e}")
        self.trackers = [self.json]

    def _call(self, tracker: Tracker, name: str, *args) -> None:
        if tracker is self.json:
            getattr(tracker, name)(*args)
            return
        try:
            getattr(tracker, name)(*args)
        except Exception as e:  # a tracker's failure (a locked database, a full disk) is reported
            self.trackers.remove(tracker)
            self.warn(f"{type(tracker).__name__} failed ({type(e).__name__}: {e}); training goes on without it, "
                      f"log.jsonl still has every record")  # fmt: skip

    def write(self, record: dict) -> None:
        """One record into every tracker (``log.jsonl`` first)."""
        if not self.main:
            return
        for tracker in list(self.trackers):
            self._call(tracker, "log", record)

    def sync(self) -> None:
        """Make the records written so far durable: called before a checkpoint that counts them is written."""
        if self.main:
            self.json.sync()

    def truncate(self, records: int | None, step: int) -> None:
        """`JsonLog.truncate` on rank 0 (resume)."""
        if self.main:
            kept = self.json.truncate(records, step)
            if records is not None and kept < records:
                self.warn(f"{self.path} holds {kept} of the {records} records written before the checkpoint")

    def warn(self, text: str) -> None:
        """A warning on stderr, shown even when quiet (rank 0 only)."""
        if not self.main:
            return
        if self.progress is not None and self.progress.enabled:
            self.progress.line(f"warning: {text}")
        else:
            print(f"deepmetric: warning: {text}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        """A message: a progress line while training, else ``deepmetric: …`` on stderr (unless quiet)."""
        if self.progress is not None:
            self.progress.line(text)
        elif not self.quiet:
            print(f"deepmetric: {text}", file=sys.stderr, flush=True)

    def iterate(self, iterable, description: str):
        """``iterable`` with a progress bar unless quiet (a method's long side work, e.g. embedding a pool)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=description, unit="batch", leave=False, disable=self.quiet or None)

"""A run's outputs while it trains: ``log.jsonl``, TensorBoard and the progress display (rank 0 only)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .checkpoint import write_text


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
    """``log.jsonl`` records (and TensorBoard scalars) and messages; inert on processes other than rank 0.

    ``open`` starts the progress display and TensorBoard for a training session; ``close`` ends them."""

    def __init__(self, run_dir: Path, *, main: bool, quiet: bool, tensorboard: bool):
        self.path, self.main, self.quiet = Path(run_dir) / "log.jsonl", main, quiet or not main
        self.tensorboard_wanted = tensorboard and main
        self.tensorboard = None
        self.progress: Progress | None = None

    def open(self, total_steps: int, step: int) -> None:
        if self.tensorboard_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                hint = "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
                raise ImportError(hint) from e
            self.tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))
        self.progress = Progress(total_steps, step, enabled=not self.quiet)

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def close(self) -> None:
        self.close_progress()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def write(self, record: dict) -> None:
        """One record into ``log.jsonl`` (and its numbers into TensorBoard)."""
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.tensorboard is not None:
            group = record["type"] if record["type"] == "train" else record.get("split", "eval")
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self.tensorboard.add_scalar(f"{group}/{key}", value, record["step"])

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

    def truncate(self, step: int) -> None:
        """Drop records written after ``step`` (by an interrupted process) so the log reads as one run."""
        if not self.main or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))

"""Shared by the benchmark scripts: the exact command line and printing / appending a markdown result."""

from __future__ import annotations

import statistics
import sys


def command_line() -> str:
    """The command that produced a result, as recorded beside it."""
    return f"`{' '.join(['python', *sys.argv])}`"


def emit(lines: list[str], write: str | None) -> str:
    """Print the markdown ``lines`` and append them (and a blank line) to ``write`` when given."""
    text = "\n".join(lines)
    print(text)
    if write:
        with open(write, "a") as f:
            f.write(text + "\n\n")
    return text


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` with three decimals (std 0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def train_once(preset, overrides: dict, run_dir) -> dict:
    """Train ``preset`` into ``run_dir`` (resuming an interrupted run, reusing a finished one); its metrics.json."""
    import json
    from pathlib import Path

    import deepmetric

    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    resume = run_dir if (run_dir / "checkpoints" / "last.pt").is_file() else None
    return deepmetric.train(None if resume else preset, output=run_dir, resume=resume, quiet=True, **overrides)[1]

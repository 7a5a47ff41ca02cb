"""Throughput of 1 and 2 CPU processes (gloo) and the cost of communication against the ideal split.

    python benchmarks/distributed.py [--steps 60] [--write benchmarks/results/distributed.md]

Fashion-MNIST zero-shot, the demo's CNN, contrastive loss, global batch 5 × 32 = 160, no validation. Three runs of
``deepmetric train``, one thread per process:

- 1 process, global batch 160;
- 2 processes (torchrun, gloo), 80 each: the same training (tests/integration/test_distributed.py);
- the ideal split: 1 process computing one rank's share (batch 80) with no communication.

Steps per second are the median of the logged rates after the first window. Communication overhead = 2-process step
time ÷ ideal-split step time (target ≤ 2). Background work on the machine should be paused while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if not __package__:  # run as `python benchmarks/distributed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


def rate(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in records if r["type"] == "train"][1:]
    return statistics.median(rates)


def train(processes: int, per_class: int, steps: int, out: Path) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = ["-m", "deepmetric", "train", "configs/fashion_mnist/contrastive.yaml", "--output", str(out), "--quiet",
           f"data.samples_per_class={per_class}", f"train.max_steps={steps}", "train.log_every=10",
           "protocol.val_by=none", "report.enabled=false", "eval.clustering=false"]  # fmt: skip
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={port}"]
    cmd = [sys.executable, *(launcher if processes > 1 else []), *cli]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}, capture_output=True)
    return rate(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dm-ddp-"))
    one = train(1, 32, args.steps, root / "one")
    two = train(2, 32, args.steps, root / "two")
    ideal = train(1, 16, args.steps, root / "ideal")
    emit([
        command_line(), "",
        "Fashion-MNIST zero-shot, demo CNN, contrastive loss, global batch 5 × 32 = 160, 1 thread per process", "",
        "| run | steps / s | images / s |", "|---|---:|---:|",
        f"| 1 process, batch 160 | {one:.2f} | {one * 160:.0f} |",
        f"| 2 processes (gloo), 80 each | {two:.2f} | {two * 160:.0f} |",
        f"| ideal split: 1 process, batch 80, no communication | {ideal:.2f} | – |", "",
        f"2 processes: {two / one:.2f} × the throughput of 1; step time {ideal / two:.2f} × the ideal split "
        "(target ≤ 2: communication at most doubles it).",
    ], args.write)  # fmt: skip


if __name__ == "__main__":
    main()

"""EasyPositiveMiner vs PML's BatchEasyHardMiner("easy", "semihard"): time per call, side by side in one process.

    python benchmarks/eps_miner_speed.py [--batch 256 --dim 512 --samples-per-class 4 --repeats 200]

Both select the same pairs (checked); calls alternate so machine noise hits both alike; medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from pytorch_metric_learning.miners import BatchEasyHardMiner

from deepmetric.miners import EasyPositiveMiner

if not __package__:  # run as `python benchmarks/eps_miner_speed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--samples-per-class", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.dim, generator=g)
    y = torch.arange(args.batch // args.samples_per_class).repeat_interleave(args.samples_per_class)
    ours, pml = EasyPositiveMiner("semihard"), BatchEasyHardMiner(pos_strategy="easy", neg_strategy="semihard")
    a, b = ours(x, y), pml(x, y)
    same = all(sorted(zip(*(t.tolist() for t in a[i : i + 2]), strict=True)) ==
               sorted(zip(*(t.tolist() for t in b[i : i + 2]), strict=True)) for i in (0, 2))  # fmt: skip
    t_ours, t_pml = [], []
    for _ in range(args.repeats):
        for miner, times in ((ours, t_ours), (pml, t_pml)):
            t0 = time.perf_counter()
            miner(x, y)
            times.append(time.perf_counter() - t0)
    o, p = statistics.median(t_ours) * 1e3, statistics.median(t_pml) * 1e3
    emit([
        command_line(), "",
        f"batch {args.batch} × {args.dim}-d, {args.samples_per_class} per class, {args.repeats} alternating calls, "
        f"{torch.get_num_threads()} torch threads; same pairs selected: {same}", "",
        "| miner | median ms / call |", "|---|---:|",
        f"| deepmetric EasyPositiveMiner('semihard') | {o:.2f} |",
        f"| PML BatchEasyHardMiner('easy', 'semihard') | {p:.2f} |", "",
        f"EasyPositiveMiner takes {o / p:.2f}× PML's time (target ≤ 1).",
    ], args.write)  # fmt: skip


if __name__ == "__main__":
    main()

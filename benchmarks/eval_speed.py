"""Evaluation speed and memory: deepmetric vs the bare matrix product vs pytorch-metric-learning, in one process.

SOP-shaped synthetic embeddings (60,502 × 512, ~11,300 classes of 2–12 images, L2-normalised) by default.
Reports wall time, the ratio to the bare chunked matrix product (the lower bound for exact search), peak
additional resident memory (sampled from /proc/self/statm), and the largest difference between the values.

    python benchmarks/eval_speed.py                          # SOP-sized, all contenders
    python benchmarks/eval_speed.py --n 200000 --dim 128 --only deepmetric   # the large case
    python benchmarks/eval_speed.py --write benchmarks/results/eval_speed.md
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deepmetric.evaluation import DEFAULT_MEMORY_BUDGET, retrieval_metrics
from deepmetric.evaluation.knn import plan_chunks

if not __package__:  # run as `python benchmarks/eval_speed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit

PAGE = os.sysconf("SC_PAGE_SIZE")
METRIC_NAMES = ("precision@1", "r_precision", "map@r")
PML_NAMES = {"precision_at_1": "precision@1", "r_precision": "r_precision", "mean_average_precision_at_r": "map@r"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 5 ms by a thread."""

    def __enter__(self):
        gc.collect()
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.base


def sop_like(n: int, dim: int, min_size: int, max_size: int, noise: float, seed: int, decay: float = 0.84):
    """SOP-shaped labels and tie-free Gaussian clusters.

    Class sizes follow a truncated geometric law on [min_size, max_size] (P(s) ∝ decay^(s − min_size)); with the
    defaults the mean is 5.36, as in SOP's test split (60,502 images, 11,316 classes).
    """
    g = torch.Generator().manual_seed(seed)
    support = torch.arange(min_size, max_size + 1)
    probs = decay ** (support - min_size).double()
    draws = support[torch.multinomial(probs / probs.sum(), n, replacement=True, generator=g)]
    sizes = draws[: int((draws.cumsum(0) < n).sum()) + 1].tolist()
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < min_size:  # fold a too-small remainder into the previous class
        last = sizes.pop()
        sizes[-1] += last
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    centres = torch.randn(len(sizes), dim, generator=g)
    x = centres[labels] + noise * torch.randn(n, dim, generator=g)
    return F.normalize(x, dim=1), labels


def bare_chunked_matmul(x: torch.Tensor, k: int, budget: int) -> None:
    """Every query against every reference, in the same chunks deepmetric uses; the result is discarded."""
    rows, _ = plan_chunks(x.shape[0], x.shape[0], k, budget)
    buffer = torch.empty(rows, x.shape[0])  # reused, as deepmetric does: no page faults per chunk
    for s in range(0, x.shape[0], rows):
        n = min(rows, x.shape[0] - s)
        torch.mm(x[s : s + n], x.T, out=buffer[:n])


def run_pml(x, labels):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=tuple(PML_NAMES), k="max_bin_count", device=torch.device("cpu"))
    out = calc.get_accuracy(x, labels)
    return {PML_NAMES[k]: v for k, v in out.items()}


def timed(fn):
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.extra, result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60_502)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--min-size", type=int, default=2)
    ap.add_argument("--max-size", type=int, default=12)
    ap.add_argument("--noise", type=float, default=2.5, help="within-class spread (class centres are N(0, I))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=DEFAULT_MEMORY_BUDGET, help="deepmetric memory_budget, bytes")
    ap.add_argument(
        "--only",
        nargs="+",
        default=["matmul", "deepmetric", "deepmetric-faiss", "pml"],
        choices=["matmul", "deepmetric", "deepmetric-faiss", "pml"],
    )
    ap.add_argument("--write", help="append the markdown table to this file")
    args = ap.parse_args(argv)

    x, labels = sop_like(args.n, args.dim, args.min_size, args.max_size, args.noise, args.seed)
    _ = x[:2048] @ x[:8192].T  # warm up BLAS so the first contender is not penalised
    n_classes = int(labels.max()) + 1
    k = max(8, int(torch.bincount(labels).max()) - 1)
    print(f"{args.n} × {args.dim}, {n_classes} classes, k = {k}, torch threads = {torch.get_num_threads()}")

    rows, values = [], {}
    if "matmul" in args.only:
        rows.append(("bare chunked matrix product", *timed(lambda: bare_chunked_matmul(x, k, args.budget))[:2]))
    if "deepmetric" in args.only:
        s, m, values["deepmetric"] = timed(lambda: retrieval_metrics(x, labels, memory_budget=args.budget))
        rows.append(("deepmetric (torch backend)", s, m))
    if "deepmetric-faiss" in args.only:
        s, m, values["deepmetric-faiss"] = timed(
            lambda: retrieval_metrics(x, labels, backend="faiss", memory_budget=args.budget)
        )
        rows.append(("deepmetric (faiss backend)", s, m))
    if "pml" in args.only:
        s, m, values["pml"] = timed(lambda: run_pml(x, labels))
        rows.append(('PML AccuracyCalculator(k="max_bin_count", faiss)', s, m))

    base = rows[0][1] if "matmul" in args.only else None
    lines = [
        command_line(),
        "",
        f"{args.n:,} × {args.dim}, {n_classes:,} classes of {args.min_size}–{args.max_size}, "
        f"k = {k}, {torch.get_num_threads()} torch threads, memory_budget = {args.budget / 2**30:.2f} GiB",
        "",
        "| contender | seconds | × bare matmul | peak extra memory (GB) |",
        "|---|---:|---:|---:|",
    ]
    for name, s, m in rows:
        ratio = f"{s / base:.2f}" if base else "–"
        lines.append(f"| {name} | {s:.1f} | {ratio} | {m / 1e9:.2f} |")
    if "pml" in values and "deepmetric" in values:
        pml_s = next(s for name, s, _ in rows if name.startswith("PML"))
        ours_s = next(s for name, s, _ in rows if name.startswith("deepmetric (torch"))
        lines += ["", f"deepmetric is {pml_s / ours_s:.2f}× faster than PML."]
    if len(values) > 1:
        ref_name = "deepmetric"
        lines += [
            "",
            "| metric | " + " | ".join(values) + " | max abs difference |",
            "|---|" + "---:|" * (len(values) + 1),
        ]
        for metric in METRIC_NAMES:
            vals = [values[c][metric] for c in values]
            diff = max(abs(v - values[ref_name][metric]) for v in vals)
            lines.append(f"| {metric} | " + " | ".join(f"{v:.7f}" for v in vals) + f" | {diff:.1e} |")
    emit(lines, args.write)


if __name__ == "__main__":
    main()

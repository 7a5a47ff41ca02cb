"""Retrieval speed: embedding throughput, index build time, query latency and recall@10 of approximate indexes.

    python benchmarks/retrieval_speed.py --run runs/demo --sizes 10000 100000 1000000

Synthetic 128-d data with cluster structure (2,000 Gaussian clusters, L2-normalised); queries are fresh points
from the same distribution. Latency is per single query (the interactive case), median over ``--queries`` queries;
recall@10 is the fraction of the exact top-10 (flat index) that an index returns.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepmetric.retrieval import EmbeddingIndex

if not __package__:  # run as `python benchmarks/retrieval_speed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


def clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embedding_throughput(run_dir: str, n: int = 2048) -> tuple[float, str]:
    import deepmetric

    model = deepmetric.load(run_dir, device="cpu")
    x = torch.randint(0, 256, (n, model.channels, model.load_size, model.load_size), dtype=torch.uint8)
    model.embed(x[:256])
    t0 = time.perf_counter()
    model.embed(x, batch_size=256)
    return n / (time.perf_counter() - t0), f"{model.cfg.model.backbone}, {model.load_size}² input, {model.dim}-d"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run directory, for embedding throughput")
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "torch"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--nlist-factor", type=float, default=2.0, help="ivf: nlist = factor · sqrt(N)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    dim = 128
    lines = [command_line(), "", f"{torch.get_num_threads()} torch threads", ""]
    if args.run:
        rate, what = embedding_throughput(args.run)
        lines += [f"Embedding throughput ({what}, CPU, batches of 256): **{rate:,.0f} images/s**", ""]
        print(lines[-2], flush=True)
    lines += [
        f"Indexes: ivf nlist = {args.nlist_factor:g}·sqrt(N), nprobe = {args.nprobe}; hnsw M = {args.hnsw_m}, "
        f"efSearch = {args.ef_search}, efConstruction = 80. Latency = one query at a time, median of {args.queries}.",
        "",
        "| N | index | build (s) | query latency (ms) | recall@10 vs exact |",
        "|---:|---|---:|---:|---:|",
    ]
    centres = np.random.default_rng(0).standard_normal((2000, dim)).astype(np.float32)
    for n in args.sizes:
        data = clustered(n, dim, 1, centres)
        queries = clustered(args.queries, dim, 2, centres)
        ids = [str(i) for i in range(n)]
        exact = None
        for kind in args.kinds:
            nlist = int(args.nlist_factor * n**0.5)
            index = EmbeddingIndex(kind, dim, nlist=nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                                   ef_search=args.ef_search)  # fmt: skip
            t0 = time.perf_counter()
            index.add(data, ids)
            build = time.perf_counter() - t0
            index.search(queries[:5], 10)  # warm-up
            times, found = [], []
            for q in queries:
                t0 = time.perf_counter()
                _, idx = index.search(q[None], 10)
                times.append(time.perf_counter() - t0)
                found.append(idx[0])
            found = np.array(found)
            if kind == "flat" or exact is None:
                exact = found if kind in ("flat", "torch") else exact
            recall = (
                np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
                if exact is not None
                else float("nan")
            )
            row = f"| {n:,} | {kind} | {build:.1f} | {1e3 * statistics.median(times):.2f} | {recall:.3f} |"
            lines.append(row)
            print(row, flush=True)
            del index
    emit(lines, args.write)


if __name__ == "__main__":
    main()

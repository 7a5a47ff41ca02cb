"""Milvus Lite next to faiss (issue 20): insert and index build time, query latency and recall@10 against exact search.

    python -m benchmarks.milvus_speed --sizes 100000 1000000 --write benchmarks/results/retrieval.md

The data of benchmarks/retrieval_speed.py (same seeds and centres: 128-d, 2,000 Gaussian clusters, L2-normalised;
queries are fresh points of the same distribution), so the numbers sit beside its faiss table. The N vectors go into
a Milvus Lite collection (a local .db file in a temporary folder, removed afterwards) once per size, metric IP; then
for each index type (FLAT, IVF_FLAT with nlist = 2·sqrt(N) and nprobe 32, HNSW with M 32, efConstruction 80 and
ef 64) the index is dropped, created and the collection loaded, and the corresponding faiss index (IndexFlatIP,
IndexIVFFlat, IndexHNSWFlat with the same parameters) is built in this process. Latency is one query at a time,
median of ``--queries``, Milvus and faiss alternating query by query so that load from other processes hits both
alike; recall@10 is the fraction of the exact top-10 (faiss IndexFlatIP) an index returns.

Filtered search: every item has a ``category`` field with 10 values (item i: ``c{i % 10}``, 10% selectivity); the
queries search with ``filter="category == 'c3'"`` and are scored against the exact top-10 within that category
(numpy over the subset), at the unfiltered search parameters and at the larger nprobe / ef of ``--filter-nprobe`` /
``--filter-ef``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as `python benchmarks/milvus_speed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit
from benchmarks.retrieval_speed import clustered

CATEGORIES = 10
FILTER = "category == 'c3'"
COLLECTION = "bench"


def recall_at_10(found, exact) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))


def ratio(r: float) -> str:
    return f"{r:.1f}×" if r < 10 else f"{r:.0f}×"


def exact_top10(data: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids of the exact top-10 by inner product of each query among ``data`` (rows named by ``ids``)."""
    scores = queries @ data.T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return ids[np.take_along_axis(top, order, axis=1)]


def faiss_index(kind: str, data: np.ndarray, args, nlist: int):
    import faiss

    dim = data.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data)
        index.nprobe = args.nprobe
    else:
        index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
    index.add(data)
    if kind == "hnsw":
        index.hnsw.efSearch = args.ef_search
    return index


def milvus_collection(client, data: np.ndarray, batch: int) -> float:
    """Create the collection and insert ``data`` (ids 0..N-1, categories c0..c9); seconds for insert + flush."""
    from pymilvus import DataType, MilvusClient
    from tqdm import tqdm

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=data.shape[1])
    schema.add_field("category", DataType.VARCHAR, max_length=8)
    client.create_collection(COLLECTION, schema=schema)
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(data), batch), desc=f"insert {len(data):,}", unit="batch", file=sys.stdout):
        rows = range(start, min(len(data), start + batch))
        client.insert(COLLECTION, [{"id": i, "vector": data[i], "category": f"c{i % CATEGORIES}"} for i in rows])
    client.flush(COLLECTION)  # queries before a flush search growing segments, about twice as slowly
    return time.perf_counter() - t0


def milvus_index(client, index_type: str, params: dict, n: int) -> float:
    """Replace the collection's vector index by ``index_type`` and load it; seconds until it is built and loaded.

    The build parameters go as one JSON ``params`` entry (the older wire form): pymilvus 3.0.2's ``add_index`` sends
    each parameter as its own entry, which milvus-lite 3.2.2 ignores (building with its defaults: nlist 128; M 16,
    efConstruction 200)."""
    client.release_collection(COLLECTION)
    for name in client.list_indexes(COLLECTION):
        client.drop_index(COLLECTION, name)
    spec = {"index_type": index_type, "metric_type": "IP", "params": params}
    t0 = time.perf_counter()
    client._get_connection().create_index(COLLECTION, "vector", spec, index_name="vector")
    while True:  # Milvus may build an index in the background: count the build until every row is indexed
        info = client.describe_index(COLLECTION, "vector")
        if info.get("state") == "Finished" and info.get("indexed_rows", n) >= n:
            break
        time.sleep(0.1)
    client.load_collection(COLLECTION)
    seconds = time.perf_counter() - t0
    info = client.describe_index(COLLECTION, "vector")
    built = info.get("params", info)  # milvus-lite reports them as one dict, a Milvus server one key each
    if {k: str(v) for k, v in params.items()} != {k: str(built.get(k)) for k in params}:
        raise RuntimeError(f"Milvus built {index_type} as {info}, not with {params}")
    return seconds


def milvus_search(client, q: np.ndarray, params: dict, filter: str = "") -> list[int]:
    hits = client.search(COLLECTION, data=[q], limit=10, filter=filter, output_fields=["id"],
                         search_params={"metric_type": "IP", "params": params})  # fmt: skip
    return [h["id"] for h in hits[0]]


def run_size(n: int, args, centres: np.ndarray, inserts: list[str], table: list[str], filtered: list[str]) -> None:
    """Measure one collection size, appending its rows to ``inserts``, ``table`` and ``filtered`` as they finish."""
    import faiss
    from pymilvus import MilvusClient

    dim = centres.shape[1]
    threads = faiss.omp_get_max_threads()
    data = clustered(n, dim, 1, centres)
    queries = clustered(args.queries, dim, 2, centres)
    nlist = int(args.nlist_factor * n**0.5)
    t0 = time.perf_counter()
    exact_index = faiss_index("flat", data, args, nlist)
    flat_build = time.perf_counter() - t0
    exact = exact_index.search(queries, 10)[1]
    subset = np.flatnonzero(np.arange(n) % CATEGORIES == 3)
    exact_filtered = exact_top10(data[subset], queries, subset)
    milvus_kinds = {
        "flat": ("FLAT", {}, {}),
        "ivf": ("IVF_FLAT", {"nlist": nlist}, {"nprobe": args.nprobe}),
        "hnsw": ("HNSW", {"M": args.hnsw_m, "efConstruction": args.ef_construction}, {"ef": args.ef_search}),
    }
    with tempfile.TemporaryDirectory(prefix="milvus_speed_") as tmp:
        # pymilvus pings every 10 s by default; during a create_index that builds for minutes (HNSW at 1M) the
        # in-process server answers that with GOAWAY (too_many_pings) and pymilvus's retry then fails with "index
        # already exists": ping no more often than the server allows (5 min)
        client = MilvusClient(str(Path(tmp) / "bench.db"), grpc_options={"grpc.keepalive_time_ms": 600_000})
        try:
            insert = milvus_collection(client, data, args.batch)
            inserts.append(f"| {n:,} | {insert:.1f} | {n / insert:,.0f} |")
            print(f"N = {n:,}: insert + flush {insert:.1f} s", flush=True)
            for kind in args.kinds:
                index_type, build_params, search_params = milvus_kinds[kind]
                milvus_build = milvus_index(client, index_type, build_params, n)
                if kind == "flat":
                    index, faiss_build = exact_index, flat_build
                else:
                    t0 = time.perf_counter()
                    index = faiss_index(kind, data, args, nlist)
                    faiss_build = time.perf_counter() - t0
                for q in queries[:5]:  # warm-up
                    milvus_search(client, q, search_params)
                    index.search(q[None], 10)
                sides = ["milvus", *(f"faiss{t}" for t in args.faiss_threads)]
                times = {side: [] for side in sides}
                found = {side: [] for side in sides}
                for i, q in enumerate(queries):
                    for side in sides[i % len(sides) :] + sides[: i % len(sides)]:  # each goes first in turn
                        if side != "milvus":
                            faiss.omp_set_num_threads(int(side[5:]))
                        t0 = time.perf_counter()
                        ids = (
                            milvus_search(client, q, search_params)
                            if side == "milvus"
                            else index.search(q[None], 10)[1][0]
                        )
                        times[side].append(time.perf_counter() - t0)
                        found[side].append(ids)
                faiss.omp_set_num_threads(threads)
                lat = {side: 1e3 * statistics.median(t) for side, t in times.items()}
                best = min(sides[1:], key=lat.get)
                row = (f"| {n:,} | {index_type} | {milvus_build:.1f} | {faiss_build:.1f} | {lat['milvus']:.2f} | "
                       + " | ".join(f"{lat[side]:.2f}" for side in sides[1:])
                       + f" | {ratio(lat['milvus'] / lat[best])} | {recall_at_10(found['milvus'], exact):.3f} | "
                       f"{recall_at_10(found[best], exact):.3f} |")  # fmt: skip
                table.append(row)
                print(row, flush=True)
                if index is not exact_index:
                    del index
                tries = [search_params]
                if kind == "ivf":
                    tries += [{"nprobe": p} for p in args.filter_nprobe if args.nprobe < p <= nlist]
                elif kind == "hnsw":
                    tries += [{"ef": e} for e in args.filter_ef if e > args.ef_search]
                for params in tries:
                    for q in queries[:5]:
                        milvus_search(client, q, params, FILTER)
                    times, found = [], []
                    for q in queries:
                        t0 = time.perf_counter()
                        found.append(milvus_search(client, q, params, FILTER))
                        times.append(time.perf_counter() - t0)
                    shown = ", ".join(f"{k} {v}" for k, v in params.items()) or "—"
                    row = (f"| {n:,} | {index_type} | {shown} | {1e3 * statistics.median(times):.2f} | "
                           f"{recall_at_10(found, exact_filtered):.3f} |")  # fmt: skip
                    filtered.append(row)
                    print(row, flush=True)
            client.drop_collection(COLLECTION)
        finally:
            client.close()
    del exact_index


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", choices=("flat", "ivf", "hnsw"), default=["flat", "ivf", "hnsw"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--nlist-factor", type=float, default=2.0, help="ivf: nlist = factor · sqrt(N)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--filter-nprobe", nargs="*", type=int, default=[128, 512],
                    help="filtered search: IVF_FLAT nprobe tried besides --nprobe")  # fmt: skip
    ap.add_argument("--filter-ef", nargs="*", type=int, default=[256, 1024],
                    help="filtered search: HNSW ef tried besides --ef-search")  # fmt: skip
    ap.add_argument("--faiss-threads", nargs="+", type=int, default=[1, 2],
                    help="faiss single-query latency measured at each of these OpenMP thread counts")  # fmt: skip
    ap.add_argument("--batch", type=int, default=10_000, help="rows per Milvus insert call")
    ap.add_argument("--write", help="append the result to this markdown file")
    args = ap.parse_args(argv)
    import faiss

    dim = 128
    threads = faiss.omp_get_max_threads()  # faiss builds with all of them
    lines = [
        command_line(),
        "",
        f"faiss-cpu {faiss.__version__} ({threads} OpenMP threads), pymilvus {version('pymilvus')}, "
        f"milvus-lite {version('milvus-lite')}; {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs; "
        f"load average at the start {os.getloadavg()[0]:.2f}",
        "",
        f"Indexes: IVF nlist = {args.nlist_factor:g}·sqrt(N), nprobe = {args.nprobe}; HNSW M = {args.hnsw_m}, "
        f"efConstruction = {args.ef_construction}, ef = {args.ef_search}; metric IP on L2-normalised vectors. "
        f"Latency = one query at a time, median of {args.queries}, Milvus and faiss alternating query by query. "
        "Milvus build = create_index + load_collection after dropping the previous index.",
        "",
    ]
    table = [
        "| N | index | Milvus build (s) | faiss build (s) | Milvus latency (ms) | "
        + " | ".join(f"faiss latency, {t} thread{'s' * (t > 1)} (ms)" for t in args.faiss_threads)
        + " | Milvus / faiss (faster) | Milvus recall@10 | faiss recall@10 |",
        "|---:|---|---:|---:|---:|" + "---:|" * len(args.faiss_threads) + "---:|---:|---:|",
    ]
    filtered = [
        f'Filtered search (`filter="{FILTER}"`, 10% of the items), against the exact top-10 within the category:',
        "",
        "| N | index | search params | Milvus latency (ms) | recall@10 vs exact filtered |",
        "|---:|---|---|---:|---:|",
    ]
    inserts = []
    centres = np.random.default_rng(0).standard_normal((2000, dim)).astype(np.float32)
    started = time.perf_counter()
    stopped = None
    try:
        for n in args.sizes:
            run_size(n, args, centres, inserts, table, filtered)
    except (Exception, KeyboardInterrupt) as e:  # record what finished, then fail
        stopped = e
        traceback.print_exc()
    lines += [
        f"Milvus Lite insert (batches of {args.batch:,} rows) + flush:",
        "",
        "| N | insert + flush (s) | vectors/s |",
        "|---:|---:|---:|",
        *inserts,
        "",
        *table,
        "",
        *filtered,
        "",
        f"Run time {(time.perf_counter() - started) / 60:.1f} min; load average at the end {os.getloadavg()[0]:.2f}.",
    ]
    if stopped is not None:
        lines += ["", f"**Stopped early** ({type(stopped).__name__}: {stopped}): only the rows above finished."]
    emit(lines, args.write)
    if stopped is not None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Load test of `deepmetric serve`: throughput, p50/p99 latency, errors and the server's peak memory.

    python benchmarks/serve_load.py --clients 8 32 --requests 50 --write benchmarks/results/serve_load.md

Builds, in a temporary folder (or ``--workdir``, reused), a small run trained one epoch on sklearn digits saved as
16 × 16 PNG folders, and a flat index of them; starts ``python -m deepmetric serve`` in a subprocess with its default
limits; then, for each ``--clients`` level and each connection mode, that many threads each post ``--requests``
digit PNGs to ``POST /search?k=10`` (http.client: one keep-alive connection per client, or a new connection per
request). Latency is per request, send to last byte; an error is any answer other than 200 or any exception
(connection reset, timeout). Peak RSS is the server's VmHWM (/proc/PID/status) after each row: flat memory means it
stays where the warm-up left it. A last row posts four 12,000 × 12,000 PNGs at once (a small file each, 144
megapixels decoded): they must be refused from the header (413) with the peak RSS unchanged.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if not __package__:  # run as `python benchmarks/serve_load.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


def build_index(workdir: Path) -> tuple[Path, list[Path]]:
    """A run trained one epoch on sklearn digits PNGs and a flat index of them (reused when present)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    import deepmetric
    from deepmetric.cli import main

    images, run, index = workdir / "digits_png", workdir / "run", workdir / "index"
    if not (index / "meta.json").is_file():
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
        d = load_digits()
        counts: dict[int, int] = {}
        for img, label in zip(d.images, d.target, strict=True):
            if counts.get(label, 0) >= 30:
                continue
            counts[label] = counts.get(label, 0) + 1
            folder = images / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((16, 16)).save(folder / f"{counts[label]}.png")
        deepmetric.train(
            None, output=run, quiet=True, data__name="folder", data__root=str(images), data__classes_per_batch=5,
            data__samples_per_class=8, data__load_size=16, protocol__name="zero_shot",
            protocol__train_classes="[0,1,2,3,4]", augment__train="none", augment__eval="resize_center_crop",
            augment__resize=14, augment__size=12, augment__normalization="gray", model__width=8,
            model__embedding_dim=16, train__epochs=1, report__enabled=False,
        )  # fmt: skip
        if main(["index", "build", str(run), "--images", str(images), "--out", str(index), "--quiet"]) != 0:
            raise SystemExit("serve_load: index build failed")
    return index, sorted(images.rglob("*.png"))


def big_png(width: int, height: int) -> bytes:
    """A one-colour 1-bit PNG of any size, written directly (a few kB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" + bytes((width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


BASELINE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("deepmetric.retrieval._serve_baseline", sys.argv[1])
serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)
server = serve.make_server(sys.argv[2], "127.0.0.1", 0)
print(f"deepmetric: serving {sys.argv[2]} on http://127.0.0.1:{server.server_address[1]}/", flush=True)
server.serve_forever()
"""


def start_server(index: Path, extra: list[str], source: str | None = None) -> tuple[subprocess.Popen, int]:
    """``deepmetric serve INDEX --port 0 EXTRA`` (or ``make_server`` of another serve.py ``source``); its port."""
    cmd = [sys.executable, "-m", "deepmetric", "serve", str(index), "--port", "0", *extra]
    if source:
        cmd = [sys.executable, "-c", BASELINE, source, str(index)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"serve_load: the server did not start ({line!r})")
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def client(port: int, bodies: list[bytes], requests: int, keep_alive: bool, start: threading.Barrier):
    """One client: ``requests`` posts; ``(latencies in s, {error kind: count})``."""
    latencies, errors = [], {}
    conn = None
    start.wait()
    for i in range(requests):
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/search?k=10", body=body, headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors[str(r.status)] = errors.get(str(r.status), 0) + 1
            if not keep_alive or r.will_close:
                conn.close()
                conn = None
        except Exception as e:  # resets and timeouts are what this counts
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            if conn is not None:
                conn.close()
            conn = None
            continue
        latencies.append(time.perf_counter() - t0)
    if conn is not None:
        conn.close()
    return latencies, errors


def load_row(port: int, pid: int, bodies: list[bytes], clients: int, requests: int, keep_alive: bool) -> str:
    start = threading.Barrier(clients)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(port, bodies, requests, keep_alive, start), range(clients)))
    wall = time.perf_counter() - t0
    latencies = sorted(t for lat, _ in results for t in lat)
    errors: dict[str, int] = {}
    for _, errs in results:
        for kind, n in errs.items():
            errors[kind] = errors.get(kind, 0) + n
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    shown = f"{sum(errors.values())}" + (f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else "")
    return (f"| {clients} | {'keep-alive' if keep_alive else 'new per request'} | {clients * requests} | "
            f"{len(latencies) / wall:,.0f} | {1e3 * statistics.median(latencies):.1f} | {1e3 * p99:.1f} | {shown} | "
            f"{peak_rss_mb(pid):.0f} |")  # fmt: skip


def huge_row(port: int, pid: int) -> str:
    before = peak_rss_mb(pid)
    huge = big_png(12_000, 12_000)

    def post(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/search", body=huge, headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(post, range(4)))
    wall = time.perf_counter() - t0
    return (
        f"Four 12,000 × 12,000 PNGs at once ({len(huge) / 1024:.0f} kB each): answers {statuses} in "
        f"{1e3 * wall:.0f} ms; server peak RSS {before:.0f} MB before, {peak_rss_mb(pid):.0f} MB after."
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", nargs="+", type=int, default=[8, 32], help="concurrent clients, one row each")
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--modes", nargs="+", choices=["keep-alive", "new"], default=["keep-alive", "new"])
    ap.add_argument("--workdir", help="folder for the digits, run and index (kept and reused; default: temporary)")
    ap.add_argument("--server-args", default="", help="extra `deepmetric serve` options, e.g. '--max-concurrent 4'")
    ap.add_argument(
        "--server-source",
        help="run `make_server` of this serve.py instead (an older version, to "
        "compare: `git show REV:src/deepmetric/retrieval/serve.py > old.py`); ignores --server-args",
    )
    ap.add_argument("--write", help="append the result to this markdown file")
    args = ap.parse_args(argv)
    temporary = None if args.workdir else tempfile.TemporaryDirectory(prefix="serve_load_")
    workdir = Path(args.workdir or temporary.name)
    try:
        index, pngs = build_index(workdir)
        bodies = [p.read_bytes() for p in pngs[:: max(1, len(pngs) // 64)]]
        proc, port = start_server(index, args.server_args.split(), args.server_source)
        try:
            startup = peak_rss_mb(proc.pid)
            server = (f"`make_server` of {args.server_source}" if args.server_source else
                      f"`deepmetric serve` with {args.server_args or 'its default limits'}")  # fmt: skip
            load_row(port, proc.pid, bodies, 4, 25, True)  # warm-up: torch's first calls, thread pools
            lines = [
                command_line(),
                "",
                f"{os.cpu_count()} CPUs (clients and server share them); server: {server}; {len(bodies)} distinct "
                f"16 × 16 PNG queries, k = 10, index of {len(pngs)} images. Server peak RSS: {startup:.0f} MB after "
                f"start-up, {peak_rss_mb(proc.pid):.0f} MB after a warm-up of 100 requests.",
                "",
                "| clients | connections | requests | throughput (req/s) | p50 (ms) | p99 (ms) | errors | "
                "server peak RSS (MB) |",
                "|---:|---|---:|---:|---:|---:|---|---:|",
            ]
            print("\n".join(lines), flush=True)
            for clients in args.clients:
                for mode in args.modes:
                    lines.append(load_row(port, proc.pid, bodies, clients, args.requests, mode == "keep-alive"))
                    print(lines[-1], flush=True)
            lines += ["", huge_row(port, proc.pid)]
            print(lines[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        emit(lines, args.write)
    finally:
        if temporary is not None:
            temporary.cleanup()


if __name__ == "__main__":
    main()

"""A study's runs as data: planned as cells (one setting over the seeds), trained one after another or several at once
(each in its own worker process, sharing one device), and summarised from what has finished."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._report import command_line, emit, train_once

# settings that may differ inside a cell besides the seed: the class-disjoint validation fold follows the seed
CELL_IGNORED = ("protocol.fold",)


@dataclass(eq=False)
class Run:
    """One training run: a preset, its overrides, its folder; ``then(run_dir)`` runs after training in the same
    process (work that needs the trained model, such as DiVA's validation-chosen head weights)."""

    preset: Path
    overrides: dict
    run_dir: Path
    then: Callable[[Path], object] | None = None

    def metrics(self) -> dict | None:
        """metrics.json of the finished run, None before."""
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Cell:
    """A table cell: the same settings over the seeds."""

    label: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def finished(self) -> list[dict]:
        return [m for r in self.runs if (m := r.metrics()) is not None]


def unique(runs: list[Run]) -> list[Run]:
    """``runs`` without repeats (the same folder asked for twice, e.g. a baseline two tables share), in order; one
    folder asked for with two sets of settings is an error."""
    seen: dict[Path, Run] = {}
    for run in runs:
        key = run.run_dir.resolve()
        if key in seen and (seen[key].overrides, seen[key].preset) != (run.overrides, run.preset):
            raise ValueError(f"{run.run_dir} is planned twice with different settings")
        seen.setdefault(key, run)
    return list(seen.values())


_stopping = False  # a worker told to stop (SIGTERM) starts no further run


def _term_on_parent_death() -> None:
    """Linux: ask the kernel for SIGTERM when the parent process ends (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def execute(run: Run) -> str | None:
    """Train ``run`` (reused or resumed by `train_once`) and its ``then``; the traceback of a failure, or None."""
    global _stopping
    if _stopping:
        return "not started: the study is stopping"
    try:
        train_once(run.preset, run.overrides, run.run_dir)
        if run.then is not None:
            run.then(run.run_dir)
    except (Exception, SystemExit) as e:
        _stopping = _stopping or type(e).__name__ == "TrainingInterrupted"  # the trainer caught the signal itself
        return traceback.format_exc()
    return None


def _stop_worker(signum, frame) -> None:
    global _stopping
    _stopping = True
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _start_worker(threads: int) -> None:
    """Worker start: ``threads`` CPU threads for every library (set before torch is imported); SIGTERM stops the
    worker's run (the trainer, while training, first writes a checkpoint) and every later one.

    Signals reach a worker from its driver only (`train_all` stopped early): the worker leaves the driver's process
    group, so a signal to the group (Ctrl-C, a time limit) is not delivered twice (a trainer's second signal stops it
    at once, without its checkpoint); and on Linux it gets SIGTERM if the driver dies without forwarding one."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    signal.signal(signal.SIGTERM, _stop_worker)
    os.setpgid(0, 0)
    _term_on_parent_death()
    import torch

    torch.set_num_threads(threads)


def train_all(runs: list[Run], jobs: int = 1, threads: int = 1) -> Iterator[tuple[Run, str | None]]:
    """Train ``runs`` in their order, ``jobs`` at a time; yields ``(run, traceback or None)`` as each ends.

    One job trains in this process and lets errors propagate (a study stops at a failing run, as before); more
    start that many worker processes (spawned, each with ``threads`` CPU threads, reused for the next run), where a
    failing run is reported and the others go on. Stopping the iteration cancels the runs not yet started."""
    runs = unique(runs)
    if jobs <= 1:
        for run in runs:
            train_once(run.preset, run.overrides, run.run_dir)
            if run.then is not None:
                run.then(run.run_dir)
            yield run, None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), _start_worker, (threads,))
    ended = False
    try:
        futures = {pool.submit(execute, run): run for run in runs}
        for future in as_completed(futures):
            try:
                error = future.result()
            except Exception:  # the worker died (killed, out of memory): its run stays unfinished
                error = traceback.format_exc()
            yield futures[future], error
        ended = True
    finally:
        workers = [] if ended else multiprocessing.active_children()
        for worker in workers:  # stopped early (a signal, an error, the caller): the workers would train on unseen
            worker.terminate()  # SIGTERM: the trainer finishes its step, writes a checkpoint and stops
        pool.shutdown(wait=False, cancel_futures=True)
        _join(workers)


def _join(workers, grace: float = 600.0) -> None:
    """Wait up to ``grace`` seconds for ``workers`` (told to stop) to end; SIGKILL those still alive after it."""
    import time

    deadline = time.monotonic() + grace
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()


def summary(runs: list[Run], metrics: list[str], split: str = "test") -> list[str]:
    """``mean ± std`` of each metric over the finished ``runs``, by `deepmetric.compare` (which also checks that
    they are one group: equal in every setting but the seed); ``(n=k)`` is added while some are unfinished, ``–``
    stands for a metric none has."""
    from deepmetric.compare import IGNORED, group_runs, read_run, summarise

    infos = [read_run(r.run_dir) for r in runs if r.metrics() is not None]
    if not infos:
        return ["–"] * len(metrics)
    groups = group_runs(infos, ignore=(*IGNORED, *CELL_IGNORED))
    if len(groups) != 1:
        raise ValueError(f"the runs of one cell differ in more than the seed: {[g.label for g in groups]}")
    stats = summarise(groups, metrics, split)[0]["stats"]
    more = f" (n={len(infos)})" if len(infos) < len(runs) else ""
    return [f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}{more}" if m in stats else "–" for m in metrics]


def train_cells(cells: list[Cell], jobs: int = 1, threads: int = 1) -> list[Path]:
    """Train every run of ``cells`` (`train_all`); the folders of the runs that failed, each failure printed."""
    failed = []
    for run, error in train_all([r for c in cells for r in c.runs], jobs, threads):
        if error:
            print(f"{run.run_dir} failed:\n{error}", file=sys.stderr, flush=True)
            failed.append(run.run_dir)
    return failed


def run_study(parser, cells: Callable, table: Callable, argv=None) -> None:
    """A study's ``main``: parse ``argv``, train its ``cells(args)`` (``--jobs`` at a time), print (and ``--write``)
    its ``table(args, cells, command)``, and fail naming the runs that failed."""
    args = parser.parse_args(argv)
    planned = cells(args)
    failed = train_cells(planned, args.jobs, args.threads)
    emit(table(args, planned, command_line()), args.write)
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {', '.join(map(str, failed))}")

"""The claims study of issue 18: EPS, DiVA and CCP in the pretrained-trunk regime, every table in one go.

    DEEPMETRIC_DATA=$PWD/.carry python -m benchmarks.pretrained --glyphs .carry/glyphs --jobs 12 \\
        --write OUT/pretrained.md --set train.device=cuda

The tables of ``GRID``, in its order (the glyph table of each method first, the costliest runs first): their runs
are trained ``--jobs`` at a time, each in its own worker process on the one device. ``--write`` is rewritten as runs
end: every table with its exact command (``python -m benchmarks.<study> --regime pretrained ...``, which reproduces
it alone from the same runs), finished or not (a cell short of seeds says ``n=k``). Runs are kept in ``--runs``
(one folder per study) and reused, so a stopped study (a time limit's SIGTERM: running runs save a checkpoint)
continues where it stopped when started again. The regime: benchmarks/_regime.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import shlex
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as `python benchmarks/pretrained.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line
from benchmarks._runs import Cell, Run, train_all

GRID = (  # key, title, study, its protocol options
    ("ccp-glyphs", "CCP vs base, glyphs", "ccp", ["--protocol", "glyphs_zero_shot"]),
    ("diva-glyphs", "DiVA vs margin, glyphs", "diva", ["--protocol", "glyphs_zero_shot"]),
    ("eps-shared", "EPS vs vanilla, glyphs, shared base letters", "eps", ["--protocol", "glyphs_shared_letters"]),
    ("eps-base", "EPS vs vanilla, glyphs, base-letter protocol", "eps", ["--protocol", "glyphs_base_letter"]),
    ("diva-fmnist", "DiVA vs margin, Fashion-MNIST zero-shot", "diva", ["--protocol", "fmnist_zero_shot"]),
    ("ccp-fmnist", "CCP vs base, Fashion-MNIST zero-shot", "ccp", ["--protocol", "fmnist_zero_shot"]),
    ("eps-fmnist", "EPS vs vanilla, Fashion-MNIST zero-shot", "eps", ["--protocol", "fmnist_zero_shot"]),
    ("diva-ablation", "DiVA ablation, glyphs", "diva", ["--protocol", "glyphs_zero_shot", "--ablation"]),
)
KEYS = [key for key, *_ in GRID]
REWRITE_EVERY = 30.0  # seconds between rewrites of --write while no table completes


@dataclass
class Table:
    """One table of the grid: its study, parsed options, cells and the command that makes it alone."""

    key: str
    title: str
    study: object
    args: argparse.Namespace
    cells: list[Cell]
    command: str
    complete_at: float | None = None

    @property
    def runs(self) -> list[Run]:
        return [r for c in self.cells for r in c.runs]

    def finished(self) -> int:
        return sum(r.metrics() is not None for r in self.runs)


def plan(key: str, title: str, study: str, options: list[str], args) -> Table:
    """The table ``key`` with the driver's seeds, glyphs, run folder and overrides."""
    argv = [*options, "--regime", "pretrained", "--seeds", *map(str, args.seeds), "--glyphs", args.glyphs,
            "--glyph-fonts", str(args.glyph_fonts), "--runs", str(Path(args.runs) / study),
            *(["--set", *args.set] if args.set else [])]  # fmt: skip
    module = importlib.import_module(f"benchmarks.{study}")
    parsed = module.parser().parse_args(argv)
    command = f"`python -m benchmarks.{study} {shlex.join(argv)}`"
    return Table(key, title, module, parsed, module.cells(parsed), command)


def render(tables: list[Table], started: float, status: str) -> str:
    """The markdown of every table as far as its runs have finished."""
    lines = ["# EPS, DiVA and CCP with the ImageNet-pretrained trunk (issue 18)", "", f"Made by {command_line()}.",
             "", status]  # fmt: skip
    for t in tables:
        total, done = len(t.runs), t.finished()
        when = f", complete {t.complete_at - started:.0f} s after the start" if t.complete_at else ""
        lines += ["", f"## {t.title}", "", f"{done} / {total} runs finished{when}.", ""]
        if not done:
            continue
        try:
            lines += t.study.table(t.args, t.cells, t.command)
        except Exception:
            lines += ["```", traceback.format_exc().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write(path: str | None, text: str) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def brief(run: Run) -> str:
    """A finished run in a few words: steps, the selection metric on test, the selected step."""
    m = run.metrics() or {}
    chosen = m.get("selected") or {}
    key = chosen.get("metric") or "map@r"
    value = m.get("test", {}).get(key, float("nan"))
    return f"steps {m.get('steps')}, test {key} {value:.3f}, selected step {chosen.get('step')}"


def _stop(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=KEYS, default=KEYS, help="these tables (in the grid's order)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--glyphs", default=".carry/glyphs", help="glyph build (benchmark layout: benchmarks/carry.py)")
    ap.add_argument("--glyph-fonts", type=int, default=0, help="glyphs: images of this many fonts (0: all)")
    ap.add_argument("--runs", default="runs/pretrained", help="run folder (one subfolder per study); runs are reused")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each process")
    ap.add_argument("--write", help="markdown file rewritten with the tables as runs finish")
    args = ap.parse_args(argv)
    from deepmetric.training import TrainingInterrupted  # --jobs 1 trains here: the trainer's own stop

    started = time.monotonic()
    tables = [plan(*row, args) for row in GRID if row[0] in args.only]
    runs = [r for t in tables for r in t.runs]
    print(f"{len(tables)} tables, {len(runs)} runs, {args.jobs} at a time", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    done, failed, status, last = 0, [], "", 0.0
    results = train_all(runs, args.jobs, args.threads)
    try:
        with contextlib.closing(results):
            for run, error in results:
                done += 1
                failed += [run.run_dir] if error else []
                elapsed = time.monotonic() - started
                print(f"[{elapsed:5.0f} s] {done}/{len(runs)} {'FAILED' if error else 'done'} {run.run_dir}: "
                      + (error.strip().splitlines()[-1] if error else brief(run)), flush=True)  # fmt: skip
                if error:
                    print(error, file=sys.stderr, flush=True)
                completed = [t for t in tables if t.complete_at is None and t.finished() == len(t.runs)]
                for t in completed:
                    t.complete_at = time.monotonic()
                    print(f"table {t.key} complete", flush=True)
                if completed or elapsed - last > REWRITE_EVERY:
                    status = f"{done} / {len(runs)} runs ended ({len(failed)} failed) after {elapsed:.0f} s."
                    write(args.write, render(tables, started, status))
                    last = elapsed
        status = f"All {len(runs)} runs ended ({len(failed)} failed) after {time.monotonic() - started:.0f} s."
    except (KeyboardInterrupt, TrainingInterrupted) as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = (f"Stopped ({e or 'interrupted'}) after {time.monotonic() - started:.0f} s with {done} / {len(runs)} "
                  "runs ended: running runs saved a checkpoint; the same command continues them.")  # fmt: skip
    text = render(tables, started, status)
    write(args.write, text)
    print(text, flush=True)
    summary = {"runs": len(runs), "ended": done, "failed": [str(p) for p in failed]}
    print(json.dumps(summary), flush=True)
    if failed or done < len(runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

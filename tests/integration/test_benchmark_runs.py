"""The benchmarks as a package: every study answers ``--help`` run both ways (``python -m benchmarks.X`` and
``python benchmarks/X.py``, the form recorded in benchmarks/results/*.md); and their run reuse
(benchmarks/_report.train_once): a finished run is reused only for the settings it was made with; asked for other
settings, it stops and names them instead of reporting the old run as the new one."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks import _report as report
from deepmetric.training.checkpoint import load_checkpoint

ROOT = Path(__file__).parents[2]
STUDIES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


def test_every_study_is_listed():
    assert {"eps", "diva", "ccp", "ccp_step", "diva_step", "eps_miner_speed", "eval_speed", "data_speed",
            "distributed", "retrieval_speed", "trainer_overhead", "quality", "font_modes",
            "backbone_speed"} <= set(STUDIES)  # fmt: skip


@pytest.mark.parametrize("study", STUDIES)
def test_study_answers_help_as_a_module_and_as_a_script(study):
    """Both invocations at once, from the repository root, without the caller's PYTHONPATH: run as a script, only
    benchmarks/ is on sys.path, so the study must find the ``benchmarks`` package by itself (its guard)."""
    commands = {
        "module": [sys.executable, "-m", f"benchmarks.{study}", "--help"],
        "script": [sys.executable, f"benchmarks/{study}.py", "--help"],
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1", "COLUMNS": "120"}

    def run(cmd):
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(len(commands)) as pool:
        done = dict(zip(commands, pool.map(run, commands.values()), strict=True))
    for how, proc in done.items():
        assert proc.returncode == 0, f"{' '.join(commands[how][1:])}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert proc.stdout.startswith("usage:"), f"{how}: {proc.stdout[:500]}"
    after_usage = [proc.stdout.split("\n\n", 1)[1] for proc in done.values()]  # the usage line names the program
    assert after_usage[0] == after_usage[1]


def test_command_line_records_the_invocation_as_typed(monkeypatch):
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    main.__spec__ = None  # python benchmarks/eps.py
    monkeypatch.setattr(sys, "argv", ["benchmarks/eps.py", "--seeds", "0"])
    assert report.command_line() == "`python benchmarks/eps.py --seeds 0`"
    main.__spec__ = types.SimpleNamespace(name="benchmarks.eps")  # python -m benchmarks.eps: argv[0] is the file
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "eps.py"), "--seeds", "0"])
    assert report.command_line() == "`python -m benchmarks.eps --seeds 0`"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "eps.py"), "runs/a (b)", "--set", "x=1"])
    assert report.command_line() == "`python -m benchmarks.eps 'runs/a (b)' --set x=1`"  # pastes into a shell


def test_config_differences_names_changed_settings_and_skips_new_keys():
    stored = {"train": {"epochs": 2, "seed": 0}, "loss": {"params": {"margin": 0.2}}}
    wanted = {"train": {"epochs": 3, "seed": 0, "added_later": 1}, "loss": {"params": {"margin": 0.2}}}
    assert report.config_differences(stored, wanted) == ["train.epochs: 2 → 3"]
    assert report.config_differences(stored, stored) == []
    assert report.config_differences({"miner": {"params": {}}}, {"miner": {"params": {"k": 1}}}) == [
        "miner.params: {} → {'k': 1}"
    ]


def test_train_once_reuses_only_a_run_made_with_the_same_settings(digits_config, tmp_path):
    overrides = {"train__epochs": 1, "report__enabled": False, "train__seed": 3}
    first = report.train_once(digits_config, overrides, tmp_path / "run")
    written = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    assert report.train_once(digits_config, overrides, tmp_path / "run") == first
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == written  # reused, not retrained
    with pytest.raises(SystemExit, match=r"train\.seed: 3 → 4"):
        report.train_once(digits_config, {**overrides, "train__seed": 4}, tmp_path / "run")


def test_milvus_speed_runs_end_to_end_on_a_small_collection(tmp_path):
    """benchmarks/milvus_speed.py on 2,000 items in a Milvus Lite file: insert, the three index rows next to faiss,
    the filtered rows, appended to ``--write`` under the command line."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    out = tmp_path / "retrieval.md"
    cmd = [sys.executable, "-m", "benchmarks.milvus_speed", "--sizes", "2000", "--queries", "5", "--write", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("`python -m benchmarks.milvus_speed --sizes 2000 --queries 5 --write ")
    rows = [line for line in text.splitlines() if line.startswith("| 2,000 |")]
    # insert; FLAT, IVF_FLAT, HNSW; filtered: FLAT, IVF_FLAT nprobe 32 (128, 512 exceed nlist 89), HNSW ef 64/256/1024
    assert len(rows) == 1 + 3 + 5
    for index in ("FLAT", "IVF_FLAT", "HNSW"):
        assert any(row.startswith(f"| 2,000 | {index} | ") and row.count("|") == 11 for row in rows), index
    assert "| 2,000 | HNSW | ef 1024 |" in text


def test_own_data_benchmark_trains_the_preset_on_a_glyph_folder_over_seeds(tmp_path, capsys):
    from benchmarks import own_data

    own_data.main(["--folder", str(tmp_path / "folder"), "--max-fonts", "20", "--runs", str(tmp_path / "runs"),
                   "--seeds", "0", "1", "--set", "augment.size=32", "augment.resize=37", "train.max_steps=2",
                   "train.eval_every_steps=2", "report.enabled=false", "data.workers=0"])  # fmt: skip
    out = capsys.readouterr().out
    folders = [p for p in (tmp_path / "folder").iterdir() if p.is_dir()]
    assert len(folders) >= 40 and all(len(list(f.glob("*.png"))) >= 20 for f in folders)  # a folder per character
    assert "| 0 | " in out and "| 1 | " in out
    assert "fine-tuned, mean ± std over seeds [0, 1]: map@r" in out and "model as built, mean ± std" in out


# a study's driver, in short: two long digits runs trained two at a time, a SIGTERM turned into KeyboardInterrupt
DRIVER = """
import signal, sys
from pathlib import Path
from benchmarks._runs import Run, train_all

def stop(signum, frame):
    raise KeyboardInterrupt

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    config, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = [Run(config, {"train__epochs": 10000, "report__enabled": False, "train__seed": s}, out / f"seed{s}")
            for s in (0, 1)]
    try:
        for run, error in train_all(runs, jobs=2, threads=1):
            print("ended", run.run_dir, flush=True)
    except KeyboardInterrupt:
        print("stopped", flush=True)
"""


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            found += [int(stat.parent.name)] if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid else []
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _train_steps(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return sum('"type": "train"' in line for line in log.read_text().splitlines()) if log.is_file() else 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")
@pytest.mark.parametrize("to", ["driver", "group"])
def test_stopping_a_study_stops_its_workers_each_with_a_checkpoint(digits_config, tmp_path, to):
    """SIGTERM to the driver alone (``kill PID``) or to its process group (Ctrl-C, a time limit): the driver tells
    each worker once, each finishes its step, writes a checkpoint and ends; no process trains on."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1",
                                                                          "PYTHONPATH": str(ROOT)}  # fmt: skip
    driver = subprocess.Popen([sys.executable, str(script), str(digits_config), str(tmp_path / "runs")], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    runs = [tmp_path / "runs" / f"seed{s}" for s in (0, 1)]
    deadline = time.time() + 240
    while min(map(_train_steps, runs)) < 3 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert driver.poll() is None, driver.communicate()[1][-3000:]
    workers = _children(driver.pid)
    assert len(workers) >= 2
    if to == "driver":
        driver.send_signal(signal.SIGTERM)
    else:
        os.killpg(driver.pid, signal.SIGTERM)
    out, err = driver.communicate(timeout=240)
    assert "stopped" in out, err[-3000:]
    deadline = time.time() + 30
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), f"workers still running: {[p for p in workers if _alive(p)]}"
    for run in runs:  # each worker got one signal: it finished its step and saved it (a second stops at once)
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == _train_steps(run), err[-3000:]
        assert not (run / "metrics.json").exists()
    assert err.count("finishing step") == 2, err[-3000:]

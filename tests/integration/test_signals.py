"""Real SIGTERM / SIGINT sent to `deepmetric train` in a subprocess: the step finishes, a checkpoint is written, the
exit status is 143 / 130 with the resume command printed, and the resumed run ends identical to an uninterrupted
one; a second Ctrl-C stops at once."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deepmetric.training.checkpoint import load_checkpoint
from tests.integration.conftest import DIGITS_CONFIG

# `deepmetric train` with two extra losses: the digits run's triplet loss made slower (so that a signal lands
# mid-run) and one that hangs from its third call (a step long enough for a second Ctrl-C), saying so in a file
LAUNCHER = """
import os, pathlib, sys, time
from deepmetric.registry import LOSSES, resolve

Triplet = resolve("loss", "triplet_margin")

class SlowTriplet(Triplet):
    def forward(self, *args, **kwargs):
        time.sleep(0.05)
        return super().forward(*args, **kwargs)

class Hang(SlowTriplet):
    calls = 0

    def forward(self, *args, **kwargs):
        Hang.calls += 1
        if Hang.calls >= 3:
            pathlib.Path(os.environ["HANG_MARKER"]).touch()  # the test's cue: step 3 hangs now
            time.sleep(60)
        return super().forward(*args, **kwargs)

LOSSES["slowtriplet"], LOSSES["hang"] = SlowTriplet, Hang
from deepmetric.cli import main
sys.exit(main(sys.argv[1:]))
"""
SETTINGS = ("report.enabled=false", "loss.name=slow_triplet")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config, the launcher and an uninterrupted reference run (same losses, same process settings)."""
    folder = tmp_path_factory.mktemp("signals")
    (folder / "digits.yaml").write_text(DIGITS_CONFIG)
    (folder / "launch.py").write_text(LAUNCHER)
    done = subprocess.run(_cmd(folder, "train", str(folder / "digits.yaml"), "--output", str(folder / "reference"),
                               *SETTINGS), env=_env(), timeout=300, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads((folder / "reference" / "metrics.json").read_text())


def _cmd(folder, *args):
    return [sys.executable, str(folder / "launch.py"), *args, "--quiet"]


def _env(**extra):
    return {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", **extra}


def _train_steps(run_dir):
    log = run_dir / "log.jsonl"
    steps = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            record = json.loads(line)
            steps += [record["step"]] if record["type"] == "train" else []
    return steps


def _start(folder, run_dir, *extra):
    err = open(run_dir.parent / f"{run_dir.name}.err", "w+")  # noqa: SIM115 (read back after the process ends)
    proc = subprocess.Popen(_cmd(folder, "train", str(folder / "digits.yaml"), "--output", str(run_dir), *extra),
                            env=_env(HANG_MARKER=str(run_dir.parent / "hanging")), stderr=err)  # fmt: skip
    return proc, err


def _wait_for_step(proc, run_dir, step):
    deadline = time.time() + 240
    while max(_train_steps(run_dir), default=0) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal"


def _stderr(err):
    err.seek(0)
    return err.read()


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_saves_and_resumes_identically(setup, tmp_path, sig, status):
    folder, expected = setup
    run_dir = tmp_path / "run"
    proc, err = _start(folder, run_dir, *SETTINGS)
    _wait_for_step(proc, run_dir, 5)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == status  # today: SIGTERM kills with nothing saved, SIGINT a traceback
    text = _stderr(err)
    assert f"continue with: deepmetric train --resume {run_dir}" in text and "Traceback" not in text, text
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert stopped >= 5 and _train_steps(run_dir) == list(range(1, stopped + 1))  # the step finished, then saved
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "metrics.json").exists()
    resumed = subprocess.run(_cmd(folder, "train", "--resume", str(run_dir)), env=_env(), timeout=300,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["steps"] == expected["steps"]
    for split in ("val", "test"):
        for key, value in expected[split].items():
            assert got[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, expected["steps"] + 1))


def test_a_second_ctrl_c_stops_at_once(setup, tmp_path):
    folder, _ = setup
    run_dir = tmp_path / "run"
    proc, err = _start(folder, run_dir, "report.enabled=false", "loss.name=hang", "train.checkpoint_every=1")
    deadline = time.time() + 240
    while not (tmp_path / "hanging").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # until step 3 hangs in its loss
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 30
    while "finishing step 3" not in _stderr(err) and time.time() < deadline:
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130 and time.time() - sent < 20  # not after the 60 s step
    text = _stderr(err)
    assert "SIGINT: stopped at once, with the checkpoint of step 2" in text and "--resume" in text, text
    assert "Traceback" not in text
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
    assert not list(run_dir.rglob("*.tmp"))

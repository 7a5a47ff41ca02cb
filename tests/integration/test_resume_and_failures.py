"""Exact resume after a real kill -9; non-finite losses, gradients and weights (and skipping them); explicit resume
overrides; re-running a failed run with overwrite; skipped images."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import deepmetric
from deepmetric.config import load_config
from deepmetric.errors import ConfigError
from deepmetric.registry import LOSSES
from deepmetric.training import NonFiniteLossError, Trainer
from deepmetric.training.checkpoint import load_checkpoint
from deepmetric.training.numerics import first_bad


def _train_cmd(config, run_dir, *extra):
    return [sys.executable, "-m", "deepmetric", "train", str(config), "--output", str(run_dir), "--quiet", *extra]


def _resume_cmd(run_dir, *extra):
    return [sys.executable, "-m", "deepmetric", "train", "--resume", str(run_dir), "--quiet", *extra]


SETTINGS = ("report.enabled=false", "train.checkpoint_every=2")  # last.pt every 2 steps: kills land between them


def _env():
    return {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}


def _last_logged_step(run_dir):
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return 0
    steps = [0]
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            steps.append(json.loads(line)["step"])
    return max(steps)


def test_resume_after_kill_minus_9_at_random_steps_matches_uninterrupted(digits_config, tmp_path):
    ref = tmp_path / "reference"
    subprocess.run(_train_cmd(digits_config, ref, *SETTINGS), env=_env(), check=True, timeout=300)
    expected = json.loads((ref / "metrics.json").read_text())
    total = expected["steps"]
    seed = int(os.environ.get("DEEPMETRIC_TEST_SEED") or time.time())
    print(f"kill moments drawn with seed {seed} (replay: DEEPMETRIC_TEST_SEED={seed})")
    rng = random.Random(seed)
    kill_steps = sorted(rng.sample(range(2, total - 1), 3))
    for kill_at in kill_steps:
        run_dir = tmp_path / f"killed-at-{kill_at}"
        proc = subprocess.Popen(_train_cmd(digits_config, run_dir, *SETTINGS), env=_env())
        deadline = time.time() + 240
        while _last_logged_step(run_dir) < kill_at and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run_dir / "metrics.json").exists(), f"run finished before the kill at step {kill_at} (seed {seed})"
        subprocess.run(_resume_cmd(run_dir), env=_env(), check=True, timeout=300)
        got = json.loads((run_dir / "metrics.json").read_text())
        assert got["steps"] == total
        for split in ("val", "test"):
            for key, value in expected[split].items():
                assert got[split][key] == pytest.approx(value, abs=1e-6), (kill_at, split, key, f"seed {seed}")
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        train_steps = [r["step"] for r in records if r["type"] == "train"]
        assert train_steps == list(range(1, total + 1)), (
            f"log after resume at {kill_at} is not one clean run (seed {seed})"
        )


class NaNAfter(torch.nn.Module):
    """A loss that turns NaN at its sixth call (to test the guard)."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.calls = 0

    def forward(self, embeddings, labels, pairs=None):
        self.calls += 1
        loss = embeddings.pow(2).sum() * 1e-3
        return loss * float("nan") if self.calls >= 6 else loss


def test_non_finite_loss_stops_with_step_and_parts_and_keeps_last_checkpoint(digits_config, tmp_path, monkeypatch):
    monkeypatch.setitem(LOSSES, "nanafter", NaNAfter)
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 6 \(loss=nan\).*step 4"):
        deepmetric.train(digits_config, output=run_dir, quiet=True, loss__name="nan_after", train__checkpoint_every=2)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()


class NaNGradAt(torch.nn.Module):
    """A finite loss whose gradients are NaN at the given calls (the derivative of √x at 0)."""

    at: tuple[int, ...] = (6,)

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.calls = 0

    def forward(self, embeddings, labels, pairs=None):
        self.calls += 1
        loss = embeddings.pow(2).sum() * 1e-3
        if self.calls in self.at:
            loss = loss + (embeddings - embeddings.detach()).pow(2).sum().sqrt()
        return loss


def _sound(state) -> bool:
    return first_bad(state["method"].items()) is None


def test_learning_rate_1e6_stops_naming_the_step_and_the_weight(digits_config, tmp_path):
    """Today: exit 0 with BatchNorm running variances of 7e28 (finite, but their square overflows float32)."""
    run_dir = tmp_path / "lr"
    with pytest.raises(NonFiniteLossError, match=r"non-finite weight after step 2: model\.\S+running_var reaches .*"
                       r"overflows float32.*last good checkpoint \(\S+last\.pt, step 1\)"):  # fmt: skip
        deepmetric.train(digits_config, output=run_dir, quiet=True, optim__lr=1e6, train__checkpoint_every=1)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 1 and _sound(state)  # the step-2 weights were never saved
    assert not (run_dir / "metrics.json").exists()
    done = subprocess.run(_train_cmd(digits_config, tmp_path / "lr-cli", "optim.lr=1e6"), env=_env(), timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and "no checkpoint had been written" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_on_a_gpu_the_checks_wait_for_log_and_checkpoint_steps(digits_config, tmp_path, monkeypatch):
    """The GPU path (no host sync per step), run on the CPU: the first NaN step is remembered on the device and
    reported at the next checkpoint; weights are checked at log steps."""
    monkeypatch.setitem(LOSSES, "nanafter", NaNAfter)

    def trainer(name, *overrides):
        cfg = load_config(digits_config, ["report.enabled=false", "train.log_every=5", *overrides])
        trainer = Trainer(cfg, tmp_path / name, quiet=True)
        trainer.numerics.every_step = False  # as on a GPU
        return trainer

    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 6;.*\(\S+last\.pt, step 4\)"):
        trainer("nan", "loss.name=nan_after", "train.checkpoint_every=4").fit()
    with pytest.raises(NonFiniteLossError, match=r"^non-finite weight after step 5: \S+running_var.*sound at 0\)"):
        trainer("lr", "optim.lr=1e6").fit()


def test_non_finite_gradient_stops_naming_the_parameter(digits_config, tmp_path, monkeypatch):
    monkeypatch.setitem(LOSSES, "nangradat", NaNGradAt)
    run_dir = tmp_path / "nangrad"
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite gradient at step 6: model\.backbone\.\S+ holds nan.*step 4"
    ):
        deepmetric.train(digits_config, output=run_dir, quiet=True, loss__name="nan_grad_at", train__checkpoint_every=2)
    assert _sound(load_checkpoint(run_dir / "checkpoints" / "last.pt"))


def test_a_bounded_number_of_non_finite_steps_can_be_skipped(digits_config, tmp_path, monkeypatch):
    monkeypatch.setitem(LOSSES, "nangradat", NaNGradAt)
    monkeypatch.setattr(NaNGradAt, "at", (6, 9))

    def cfg(limit):
        cfg = load_config(digits_config, ["loss.name=nan_grad_at", "report.enabled=false"])
        cfg.train.skip_nonfinite_steps = limit
        return cfg

    _, metrics = deepmetric.train(cfg(2), output=tmp_path / "two", quiet=True)
    assert metrics["skipped_steps"] == [6, 9] and metrics["steps"] == 36
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "skipped"] == [6, 9]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 37))
    with pytest.raises(NonFiniteLossError, match=r"step 9.*more than train\.skip_nonfinite_steps=1 .*skipped: \[6\]"):
        deepmetric.train(cfg(1), output=tmp_path / "one", quiet=True)


def test_resume_applies_safe_overrides_and_prints_them(digits_config, tmp_path, capsys):
    """Today: ``train --resume RUN train.max_steps=24`` stops at 20 without a word."""
    run_dir, _ = deepmetric.train(digits_config, output=tmp_path / "run", quiet=True, train__max_steps=6,
                                  report__enabled=False)  # fmt: skip
    _, metrics = deepmetric.train(resume=run_dir, overrides=["train.max_steps=8", "train.log_every=2"])
    assert metrics["steps"] == 8
    assert "resuming with train.log_every: 1 → 2, train.max_steps: 6 → 8" in capsys.readouterr().err
    assert load_config(run_dir / "config.yaml").train.max_steps == 8  # later readers see the new budget
    with pytest.raises(ConfigError, match=r"step budget \(4 steps.*below step 8"):
        deepmetric.train(resume=run_dir, quiet=True, train__max_steps=4)


def test_resume_refuses_other_overrides_and_a_config_file(digits_config, tmp_path):
    run_dir, _ = deepmetric.train(digits_config, output=tmp_path / "run", quiet=True, train__max_steps=3,
                                  report__enabled=False)  # fmt: skip
    log = (run_dir / "log.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"^optim\.lr cannot be changed when resuming .*train\.max_steps"):
        deepmetric.train(resume=run_dir, quiet=True, optim__lr=0.1, train__max_steps=5)
    with pytest.raises(ConfigError, match=r"a config .*digits\.yaml.* cannot be given with --resume"):
        deepmetric.train(digits_config, resume=run_dir, quiet=True)
    changed = load_config(run_dir / "config.yaml", ["loss.params.margin=0.3"])  # as MLRC or a script would pass it
    with pytest.raises(ConfigError, match=r"loss\.params\.margin=0\.3 differs from 0\.2"):
        Trainer(changed, run_dir, resume=True, quiet=True)
    assert (run_dir / "log.jsonl").read_text() == log


class CrashAt(NaNGradAt):
    """A loss that fails at its third call: a run that dies half-made (as one on a corrupt image does)."""

    def forward(self, embeddings, labels, pairs=None):
        if self.calls == 2:
            raise RuntimeError("boom")
        return super().forward(embeddings, labels, pairs)


def test_a_failed_run_is_rerun_with_overwrite(digits_config, tmp_path, monkeypatch):
    monkeypatch.setitem(LOSSES, "crashat", CrashAt)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        deepmetric.train(digits_config, output=run_dir, quiet=True, loss__name="crash_at", train__checkpoint_every=1)
    (run_dir / "notes.txt").write_text("mine")
    (tmp_path / "beside.txt").write_text("mine too")
    with pytest.raises(FileExistsError, match=r"--resume .*--overwrite"):
        deepmetric.train(digits_config, output=run_dir, quiet=True)
    _, metrics = deepmetric.train(digits_config, output=run_dir, quiet=True, overwrite=True, report__enabled=False)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, metrics["steps"] + 1))
    assert (run_dir / "notes.txt").read_text() == "mine" and (tmp_path / "beside.txt").read_text() == "mine too"


def test_skipped_images_are_counted_and_named(tmp_path):
    from tests.unit.data.layouts import tiny_image

    for c in range(6):
        for j in range(6):
            tiny_image(tmp_path / "imgs" / f"c{c}" / f"{j}.png", 10 * c + j, size=(12, 12))
    bad = tmp_path / "imgs" / "c1" / "9.png"
    bad.write_bytes(b"broken")
    _, metrics = deepmetric.train(
        None, output=tmp_path / "run", quiet=True, name="folder",
        data__name="folder", data__root=str(tmp_path / "imgs"),
        data__on_bad_image="skip", data__classes_per_batch=2, data__samples_per_class=4, data__load_size=12,
        protocol__name="zero_shot", protocol__train_classes="[0,1,2]", protocol__val_by="none",
        augment__train="none", augment__eval="none", augment__size=12, model__width=4, model__embedding_dim=8,
        train__epochs=1, report__enabled=False,
    )  # fmt: skip
    assert metrics["skipped_images"]["count"] >= 1 and metrics["skipped_images"]["paths"] == [str(bad)]

"""A run's files on digits: garbled checkpoints are caught where they are read (evaluate, resume), resume falls back
to the previous intact checkpoint, log.jsonl holds each record once across interruptions, files are 0644 under the
usual umask, temporary files left by a kill are removed."""

import json
import os
import stat

import pytest
import torch

import deepmetric
from deepmetric.cli import main
from deepmetric.config import load_config
from deepmetric.integrity import IntegrityError
from deepmetric.training import Trainer
from deepmetric.training.checkpoint import load_checkpoint
from tests.unit.training.test_checkpoint_integrity import garble

SETTINGS = {"report__enabled": False, "train__checkpoint_every": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its directory and metrics."""
    from tests.integration.conftest import DIGITS_CONFIG

    folder = tmp_path_factory.mktemp("reference")
    (folder / "digits.yaml").write_text(DIGITS_CONFIG)
    return deepmetric.train(folder / "digits.yaml", output=folder / "run", quiet=True, **SETTINGS)


def _interrupted(config, run_dir, at_step: int, **settings):
    """A run stopped by an exception at the end of step ``at_step`` (as a kill would stop it, minus the signal)."""
    cfg = load_config(config, [f"{k.replace('__', '.')}={v}" for k, v in {**SETTINGS, **settings}.items()])
    trainer = Trainer(cfg, run_dir, quiet=True)

    def crash(step):
        if step == at_step:
            raise KeyboardInterrupt

    trainer.method.on_step_end = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _assert_same_run(run_dir, metrics, reference):
    expected = reference[1]
    assert metrics["steps"] == expected["steps"]
    for split in ("val", "test"):
        for key, value in expected[split].items():
            assert metrics[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    steps = [r["step"] for r in _records(run_dir) if r["type"] == "train"]
    assert steps == list(range(1, expected["steps"] + 1))
    assert _evals(run_dir) == _evals(reference[0])


def _evals(run_dir):
    return [(r["split"], r["step"], r.get("baseline", False)) for r in _records(run_dir) if r["type"] == "eval"]


def test_evaluate_refuses_a_garbled_best_checkpoint(reference, capsys):
    run_dir = reference[0]
    best = run_dir / "checkpoints" / "best.pt"
    original = best.read_bytes()
    assert main(["evaluate", str(run_dir), "--quiet", "--json"]) == 0
    capsys.readouterr()
    try:
        garble(best)  # today: exit 0 and recall@1 0.196 instead of 0.987
        assert main(["evaluate", str(run_dir), "--quiet", "--json"]) == 1
        err = capsys.readouterr().err
        assert f"{best} does not match its recorded hash" in err and len(err.strip().splitlines()) == 1
        with pytest.raises(IntegrityError, match=r"best\.pt"):
            deepmetric.load_run(run_dir)
    finally:
        best.write_bytes(original)


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_garbled(reference, digits_config, tmp_path,
                                                                               capsys):  # fmt: skip
    run_dir = tmp_path / "run"
    _interrupted(digits_config, run_dir, at_step=7)  # last.pt of step 6, last.prev.pt of step 4
    ckpt = run_dir / "checkpoints"
    assert load_checkpoint(ckpt / "last.pt")["step"] == 6 and load_checkpoint(ckpt / "last.prev.pt")["step"] == 4
    garble(ckpt / "last.pt")  # today: resume trains on from the garbage
    _, metrics = deepmetric.train(resume=run_dir, quiet=True)
    err = capsys.readouterr().err
    assert "last.pt does not match its recorded hash" in err and "resuming from the previous checkpoint" in err
    assert (ckpt / "last.corrupt.pt").is_file()  # kept aside, never rotated into last.prev.pt
    _assert_same_run(run_dir, metrics, reference)


def test_resume_with_no_intact_checkpoint_names_both(digits_config, tmp_path):
    run_dir = tmp_path / "run"
    _interrupted(digits_config, run_dir, at_step=5)
    for name in ("last.pt", "last.prev.pt"):
        garble(run_dir / "checkpoints" / name)
    with pytest.raises(IntegrityError, match=r"no intact checkpoint.*last\.pt.*last\.prev\.pt.*--overwrite"):
        deepmetric.train(resume=run_dir, quiet=True)


def test_log_holds_each_record_once_after_a_stop_before_the_first_checkpoint(reference, digits_config, tmp_path):
    run_dir = tmp_path / "run"
    _interrupted(digits_config, run_dir, at_step=1, train__checkpoint_every="null")  # no checkpoint yet
    assert not (run_dir / "checkpoints" / "last.pt").exists() and _records(run_dir)  # baseline records
    (run_dir / "log.jsonl").write_text((run_dir / "log.jsonl").read_text() + '{"type": "train", "st')  # a cut line
    _, metrics = deepmetric.train(resume=run_dir, quiet=True, train__checkpoint_every=2)  # today: doubled records
    _assert_same_run(run_dir, metrics, reference)


def test_log_holds_the_test_record_once_after_a_stop_during_the_final_evaluation(reference, digits_config, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    import deepmetric.training.outcome as outcome_module

    run_dir = tmp_path / "run"

    def crash(path, obj):
        raise KeyboardInterrupt  # killed after the test record, before metrics.json

    monkeypatch.setattr(outcome_module, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        deepmetric.train(digits_config, output=run_dir, quiet=True, **SETTINGS)
    monkeypatch.undo()
    assert [r["split"] for r in _records(run_dir) if r["type"] == "eval"][-1] == "test"
    _, metrics = deepmetric.train(resume=run_dir, quiet=True)  # today: the test record twice
    _assert_same_run(run_dir, metrics, reference)


def test_run_files_are_0644_and_stale_temporary_files_are_removed_on_resume(digits_config, tmp_path):
    old = os.umask(0o022)
    try:
        run_dir = tmp_path / "run"
        _interrupted(digits_config, run_dir, at_step=3)
        stale = run_dir / "checkpoints" / ".last.pt.0a1b2c3d.tmp"  # what a kill during a write leaves
        stale.write_bytes(b"half")
        deepmetric.train(resume=run_dir, quiet=True, report__enabled=True, train__max_steps=4)
    finally:
        os.umask(old)
    assert not stale.exists()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "log.jsonl", "metrics.json", "report.html", "best.pt",
                                       "best.pt.sha256", "last.pt", "last.pt.sha256", "last.prev.pt"}  # fmt: skip
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 4 and all(
        torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point()
    )

"""Learning-rate schedules and atomic writes."""

import math
import os

import pytest
import torch

from deepmetric.config import ScheduleConfig
from deepmetric.training.checkpoint import load_checkpoint, save_checkpoint, write_json
from deepmetric.training.schedule import LRSchedule


def lrs(cfg, steps, total=100, base=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = LRSchedule(cfg, opt, total)
    out = []
    for s in steps:
        sched.apply(s)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_then_step_and_multistep():
    assert lrs(ScheduleConfig(name="none", warmup_steps=4), [0, 1, 3, 50]) == [0.25, 0.5, 1.0, 1.0]
    assert lrs(ScheduleConfig(name="step", step_size=10, gamma=0.5), [0, 9, 10, 25]) == [1, 1, 0.5, 0.25]
    assert lrs(ScheduleConfig(name="multistep", milestones=[5, 8], gamma=0.1), [4, 5, 8]) == pytest.approx(
        [1, 0.1, 0.01]
    )


def test_cosine_reaches_its_floor():
    values = lrs(ScheduleConfig(name="cosine", min_lr=0.1), [0, 50, 100], total=100)
    assert (
        values[0] == pytest.approx(1.0)
        and values[1] == pytest.approx(0.1 + 0.9 * 0.5)
        and values[2] == pytest.approx(0.1)
    )


def test_plateau_decays_after_patience_and_resumes():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(ScheduleConfig(name="plateau", plateau_patience=2, plateau_factor=0.5), opt, 10)
    for v in (0.5, 0.6, 0.6, 0.55):
        sched.on_validation(v)
    sched.apply(3)
    assert opt.param_groups[0]["lr"] == 0.5
    other = LRSchedule(
        ScheduleConfig(name="plateau"), torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10
    )
    other.load_state_dict(sched.state_dict())
    assert other.plateau_mult == 0.5 and other.plateau_best == 0.6


def test_atomic_write_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt.pt.sha256"]  # no temporary file left
    write_json(tmp_path / "m.json", {"a": math.pi})
    assert (tmp_path / "m.json").read_text().startswith("{")


def test_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")  # and no hash file: read unchecked, with a warning
    with pytest.raises(RuntimeError, match=r"x\.pt"), pytest.warns(UserWarning, match="no recorded hash"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")

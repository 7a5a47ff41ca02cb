"""The benchmarks' run reuse (benchmarks/_report.train_once): a finished run is reused only for the settings it was
made with; asked for other settings, it stops and names them instead of reporting the old run as the new one."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("_report", Path(__file__).parents[2] / "benchmarks" / "_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


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

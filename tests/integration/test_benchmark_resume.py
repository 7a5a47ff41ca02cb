"""benchmarks/_report.train_once continues an interrupted run with the study's whole set of overrides (only the keys
safe on resume reach the trainer; the others were checked equal to the run's config.yaml)."""

from benchmarks import _report as report


def test_train_once_continues_a_run_with_a_checkpoint_and_no_metrics(digits_config, tmp_path):
    overrides = {"train__epochs": 1, "report__enabled": False, "train__seed": 3, "train__device": "cpu"}
    first = report.train_once(digits_config, overrides, tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()  # as if stopped after its last checkpoint
    again = report.train_once(digits_config, {**overrides, "train__device": "auto"}, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert again["steps"] == first["steps"] and again["test"] == first["test"]

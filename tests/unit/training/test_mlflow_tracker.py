"""Where MLflow logs: ``log.mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns``; rank 0 only."""

import pytest

from deepmetric.config import load_config
from deepmetric.training.logging import RunLog
from deepmetric.training.trackers import MLflowTracker, build_trackers

pytest.importorskip("mlflow")


def test_the_tracking_uri_comes_from_the_config_then_the_environment_then_a_local_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/env.db")
    assert MLflowTracker("sqlite:////somewhere/config.db").uri == "sqlite:////somewhere/config.db"
    assert MLflowTracker().uri == "sqlite:////somewhere/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert MLflowTracker().uri == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns").is_dir()


def test_only_rank_0_tracks(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(None, ["log.mlflow=true"])
    assert [type(t).__name__ for t in build_trackers(cfg, tmp_path)] == ["MLflowTracker"]
    other_rank = RunLog(tmp_path / "run", main=False, quiet=True)
    other_rank.start_tracking(cfg, resumed=False)
    assert len(other_rank.trackers) == 1 and not (tmp_path / "mlflow.db").exists()  # log.jsonl's (inert) only

"""Experiment tracking against a real local MLflow store, read back through MLflow's own client; and
`deepmetric compare` on real runs."""

import json

import pytest

import deepmetric
from deepmetric.cli import main

mlflow = pytest.importorskip("mlflow")


def test_mlflow_run_has_params_metrics_and_artifacts_and_resume_continues_it(digits_config, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = {"log__mlflow": "true", "log__mlflow_tracking_uri": uri, "log__mlflow_experiment": "tests",
              "train__eval_every_steps": 2, "train__log_every": 1}  # fmt: skip
    run_dir, metrics = deepmetric.train(digits_config, output=tmp_path / "run", quiet=True, train__max_steps=4,
                                        **common)  # fmt: skip
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["loss.name"] == "triplet_margin" and run.data.params["train.seed"] == "0"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    val = client.get_metric_history(run_id, "val/map_at_r")
    assert [m.step for m in val] == [2, 4]
    assert client.get_metric_history(run_id, "baseline/test/map_at_r")[0].step == 0
    assert client.get_metric_history(run_id, "test/recall_at_1")[-1].value == pytest.approx(metrics["test"]["recall@1"])
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "checkpoints")}  # fmt: skip
    assert {"report.html", "metrics.json", "config.yaml", "checkpoints/best.pt"} <= artifacts
    # resume with a larger step budget: the same MLflow run goes on, each step logged once
    deepmetric.train(resume=run_dir, overrides=["train.max_steps=6"], quiet=True)
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_compare_on_real_runs(digits_config, tmp_path, capsys):
    for seed in (0, 1):
        deepmetric.train(digits_config, output=tmp_path / "runs" / f"s{seed}", quiet=True, train__seed=seed,
                         train__max_steps=3, report__enabled="false")  # fmt: skip
    assert main(["compare", str(tmp_path / "runs"), "--metrics", "map@r", "recall@1", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("group,map@r mean,map@r std,recall@1 mean") and out[1].split(",")[5] == "2"
    expected = [json.loads((tmp_path / "runs" / f"s{s}" / "metrics.json").read_text())["test"]["map@r"] for s in (0, 1)]
    assert float(out[1].split(",")[1]) == pytest.approx(sum(expected) / 2, abs=1e-6)
    plot = tmp_path / "curves.html"
    assert main(["compare", str(tmp_path / "runs" / "s*"), "--plot", str(plot)]) == 0
    assert "data:image/png;base64," in plot.read_text()

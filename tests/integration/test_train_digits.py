"""End-to-end: train, evaluate, embed and report on scikit-learn's digits (seconds on a CPU)."""

import json

import numpy as np
import pytest
import torch

import deepmetric
from deepmetric.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "digits.yaml"
    from .conftest import DIGITS_CONFIG

    cfg.write_text(DIGITS_CONFIG)
    run_dir, metrics = deepmetric.train(cfg, output=tmp / "run", quiet=True)
    return run_dir, metrics


def test_run_directory_contract(trained):
    run_dir, metrics = trained
    for name in (
        "config.yaml",
        "log.jsonl",
        "metrics.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "report.html",
    ):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["test"] == pytest.approx(metrics["test"])
    assert set(on_disk["test"]) >= {"recall@1", "recall@8", "precision@1", "r_precision", "map@r", "nmi", "ami",
                                    "spread_ratio", "intra_class_variance"}  # fmt: skip
    assert on_disk["selected"]["split"] == "val" and on_disk["protocol"] == "zero_shot"
    assert on_disk["splits"]["test"]["classes"] == 5
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, metrics["steps"] + 1))
    assert sum(r["type"] == "eval" and r["split"] == "val" and not r.get("baseline") for r in records) == 2
    # the baseline: the model as built, before step 1, on validation and test (no pretrained trunk: no trunk part)
    baseline = [r for r in records if r.get("baseline")]
    assert [(r["step"], r["split"]) for r in baseline] == [(0, "val"), (0, "test")]
    assert set(on_disk["baseline"]) == {"val", "test"}
    assert on_disk["baseline"]["test"]["map@r"] == pytest.approx(baseline[1]["map@r"])
    assert records.index(baseline[0]) < min(i for i, r in enumerate(records) if r["type"] == "train")


def test_baseline_leaves_training_unchanged(digits_config, tmp_path):
    """Scoring the model before step 1 draws nothing from the RNG: the trained weights are the same without it."""
    runs = {}
    for flag in ("true", "false"):
        run_dir, metrics = deepmetric.train(digits_config, output=tmp_path / flag, quiet=True, train__max_steps=6,
                                            train__baseline=flag, report__enabled="false")  # fmt: skip
        runs[flag] = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["method"]
        assert ("baseline" in metrics) == (flag == "true")
    assert all(torch.equal(runs["true"][k], runs["false"][k]) for k in runs["true"])


def test_training_learns_the_unseen_classes(trained):
    _, metrics = trained
    # 5 unseen classes: random embeddings give recall@1 ≈ 0.2
    assert metrics["test"]["recall@1"] > 0.6 and metrics["val"]["recall@1"] > 0.8


def test_report_has_metrics_and_plots(trained):
    run_dir, _ = trained
    page = (run_dir / "report.html").read_text()
    assert '<table id="metrics">' in page and "recall@1" in page
    # digits carry coarse labels (parity), so the coarse-class plot is there too
    assert page.count("data:image/png;base64,") == 7
    assert "Worst queries (lowest average precision)" in page
    assert "Most confused class pairs" in page and "Worst classes (recall@1)" in page
    assert "Verification (test pairs" in page
    for png in ("curves", "tsne", "retrieval", "per_class_recall", "coarse_class", "worst_queries", "verification"):
        assert (run_dir / "report" / f"{png}.png").stat().st_size > 1000


def test_cli_evaluate_embed_report(trained, tmp_path, capsys):
    run_dir, metrics = trained
    assert main(["evaluate", str(run_dir), "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated == pytest.approx(metrics["test"], abs=1e-6)
    assert main(["evaluate", str(run_dir), "--split", "val", "--checkpoint", "last", "--quiet"]) == 0
    assert "val metrics: recall@1" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--verification", "--json", "--quiet"]) == 0
    verified = json.loads(capsys.readouterr().out)
    n = metrics["test"]["num_queries"]
    assert verified["recall@1"] == pytest.approx(metrics["test"]["recall@1"], abs=1e-6)
    assert verified["verification/num_positive_pairs"] + verified["verification/num_negative_pairs"] == n * (n - 1) // 2
    assert (
        verified["verification/roc_auc"] > 0.55 and 0 < verified["verification/eer"] < 0.5
    )  # a tiny, briefly trained model
    assert not verified["verification/sampled"] and len(verified["verification/roc"]["fpr"]) > 2
    assert main(["evaluate", str(run_dir), "--verification", "--max-pairs", "2000", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "verification/eer" in printed and "verification/fnmr@fmr=0.01" in printed and "threshold" not in printed
    out = tmp_path / "emb"
    assert main(["embed", str(run_dir), "--split", "test", "--out", str(out), "--quiet"]) == 0
    emb = np.load(tmp_path / "emb.npy")
    sidecar = json.loads((tmp_path / "emb.json").read_text())
    assert emb.shape == (metrics["test"]["num_queries"], 32) and len(sidecar["labels"]) == emb.shape[0]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0 and (run_dir / "report.html").is_file()


def test_report_names_a_garbled_run_file(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    log = run_dir / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"type": "train", "st')  # a last line cut by a kill: left out, with a warning
    with pytest.warns(UserWarning, match="last line is cut short"):
        assert main(["report", str(run_dir)]) == 0
    log.write_text("\n".join([lines[0], "", "{garbled", *lines[1:]]) + "\n")  # a blank line counts as a line
    assert main(["report", str(run_dir)]) == 1
    assert f"{log}, line 3: not a JSON record" in capsys.readouterr().err
    log.write_text("\n".join(lines) + "\n")
    metrics = run_dir / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read {metrics}" in err and len(err.strip().splitlines()) == 1
    metrics.unlink()
    assert main(["report", str(run_dir)]) == 2  # bad input: not a finished run
    assert f"{metrics} not found: the run has not finished" in capsys.readouterr().err


def test_cli_train_errors(digits_config, tmp_path, capsys):
    assert main(["train", str(digits_config), "train.epoch=1", "--output", str(tmp_path / "x")]) == 2
    assert "did you mean train.epochs" in capsys.readouterr().err
    assert main(["train", str(digits_config), "loss.name=triplet_margn", "--output", str(tmp_path / "y")]) == 2
    assert "closest: ['tripletmargin'" in capsys.readouterr().err
    assert main(["train", str(digits_config), "data.name=mnist", "--output", str(tmp_path / "z")]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "KEY=VALUE" in capsys.readouterr().out


def test_selection_on_test_is_recorded(digits_config, tmp_path):
    _, metrics = deepmetric.train(digits_config, output=tmp_path / "leaky", quiet=True, train__select_split="test",
                                  train__epochs=1, report__enabled=False)  # fmt: skip
    assert "test split" in metrics["warning"] and metrics["selected"]["split"] == "test"


def test_float64_training_gives_a_float64_model_that_evaluates(digits_config, tmp_path, capsys):
    from deepmetric.training.checkpoint import load_checkpoint

    run_dir, metrics = deepmetric.train(digits_config, output=tmp_path / "f64", quiet=True, train__dtype="float64",
                                        train__max_steps=6, report__enabled=False)  # fmt: skip
    weights = load_checkpoint(run_dir / "checkpoints" / "last.pt")["method"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float64}
    assert main(["evaluate", str(run_dir), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics["test"], abs=1e-6)


def chromium_path():
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium_path() is None, reason="Debian chromium not installed (make test installs it)")
def test_report_renders_in_headless_chromium(trained, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    run_dir, metrics = trained
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=flags)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((run_dir / "report.html").resolve().as_uri())
        table = page.locator("#metrics")
        assert table.is_visible()
        assert table.locator("tr").count() == 1 + sum(not k.startswith("num_") for k in metrics["test"])
        assert f"{metrics['test']['recall@1']:.4f}" in table.inner_text()
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 7 and min(widths) > 100  # every embedded PNG decoded, worst queries and verification too
        assert page.get_by_alt_text("Worst queries (lowest average precision)").is_visible()
        assert page.get_by_alt_text("Verification: same-class vs different-class pairs").is_visible()
        failure_tables = page.locator("table.failures")  # confused pairs, worst classes, verification
        assert failure_tables.count() == 3 and failure_tables.first.locator("tr").count() > 1
        assert "eer" in failure_tables.last.inner_text()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000


def test_training_into_an_existing_run_is_refused(trained, digits_config):
    run_dir, _ = trained
    log_before = (run_dir / "log.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        deepmetric.train(digits_config, output=run_dir, quiet=True)
    assert (run_dir / "log.jsonl").read_text() == log_before


def test_tensorboard_mirrors_the_log(digits_config, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = deepmetric.train(digits_config, output=tmp_path / "tb", quiet=True, train__tensorboard=True,
                                        train__epochs=1, report__enabled=False)  # fmt: skip
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "val/map@r" in tags and "test/recall@1" in tags
    assert events.Scalars("test/recall@1")[-1].value == pytest.approx(metrics["test"]["recall@1"], abs=1e-6)


def test_quiet_training_prints_nothing(digits_config, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("CI", "1")  # plain progress lines, which quiet must suppress too
    deepmetric.train(digits_config, output=tmp_path / "q", quiet=True, train__epochs=1, report__enabled=False)
    out, err = capfd.readouterr()
    assert out == "" and "step" not in err


def test_evaluating_a_missing_validation_split_is_a_clear_error(digits_config, tmp_path, capsys):
    run_dir, _ = deepmetric.train(digits_config, output=tmp_path / "noval", quiet=True, protocol__val_by="none",
                                  train__epochs=1, report__enabled=False)  # fmt: skip
    assert main(["evaluate", str(run_dir), "--split", "val", "--quiet"]) == 2
    assert "has no val split" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_a_one_line_error(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    config = run_dir / "config.yaml"
    text = config.read_text()
    assert "embedding_dim: 32" in text
    config.write_text(text.replace("embedding_dim: 32", "embedding_dim: 24"))  # the config no longer fits best.pt
    assert main(["evaluate", str(run_dir), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"best.pt does not fit the model {config} describes" in err[0]
    assert "size mismatch" in err[0]

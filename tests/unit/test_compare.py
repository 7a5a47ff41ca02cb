"""`deepmetric.compare`: runs grouped by config minus the seed, mean ± std per group, flags, every format, curves."""

import json

import pytest
import yaml

from deepmetric.compare import FORMATS, compare, find_runs, group_runs, plot_curves, read_run, render, summarise


def make_run(folder, *, seed, loss="contrastive", value=None, select_split="val", curve=(0.5, 0.7)):
    folder.mkdir(parents=True)
    config = {"name": "fm", "loss": {"name": loss, "params": {"margin": 0.5}},
              "train": {"seed": seed, "select_split": select_split}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"type": "eval", "split": "val", "step": 100 * i, "map@r": v} for i, v in enumerate(curve)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if value is not None:
        metrics = {"test": {"map@r": value, "recall@1": value + 0.3}, "val": {}, "baseline": {"test": {"map@r": 0.1}}}
        if select_split == "test":
            metrics["warning"] = "model selected on the test split"
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def runs(tmp_path):
    for seed, value in enumerate((0.40, 0.44, 0.42)):
        make_run(tmp_path / "runs" / f"c{seed}", seed=seed, value=value)
    make_run(tmp_path / "runs" / "m0", seed=0, loss="multi_similarity", value=0.5)
    make_run(tmp_path / "runs" / "m1", seed=1, loss="multi_similarity")  # unfinished
    make_run(tmp_path / "other" / "t0", seed=0, loss="triplet", value=0.3, select_split="test")
    return tmp_path


def test_groups_by_config_minus_seed_with_mean_std_and_flags(runs):
    groups = group_runs([read_run(p) for p in find_runs([str(runs / "runs"), str(runs / "other" / "t*")])])
    assert [g.label for g in groups] == ["loss.name=contrastive, train.select_split=val",
                                         "loss.name=multi_similarity, train.select_split=val",
                                         "loss.name=triplet, train.select_split=test"]  # fmt: skip
    rows = summarise(groups, ["map@r", "recall@1"])
    assert rows[0]["n"] == 3 and rows[0]["seeds"] == ["0", "1", "2"]
    mean, std = rows[0]["stats"]["map@r"]
    assert mean == pytest.approx(0.42) and std == pytest.approx(0.02)  # sample std of 0.40, 0.44, 0.42
    assert rows[1]["flags"] == ["1 unfinished", "single seed"] and rows[1]["n"] == 1
    assert "selected on test" in rows[2]["flags"]
    assert summarise(groups, ["map@r"], split="baseline")[0]["stats"]["map@r"] == (0.1, 0.0)


def test_every_format(runs):
    for fmt in FORMATS:
        text = compare([str(runs / "runs")], ["map@r"], fmt=fmt)
        assert "0.420" in text, fmt
    assert "| loss.name=contrastive | 0.420 ± 0.020 | 3 |" in compare([str(runs / "runs")], ["map@r"], fmt="markdown")
    latex = compare([str(runs / "runs")], ["map@r"], fmt="latex")
    assert r"0.420 $\pm$ 0.020" in latex
    assert latex.splitlines()[-1] == "% loss.name=multi_similarity: 1 unfinished; single seed"  # below the table
    assert "loss.name=contrastive,0.420000,0.020000,3,0 1 2," in compare([str(runs / "runs")], ["map@r"], fmt="csv")
    with pytest.raises(ValueError, match="--format 'html' is not one of"):
        render([], ["map@r"], "html")


def test_missing_runs_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run matches"):
        find_runs([str(tmp_path / "nothing*")])


def test_curves_plot(runs, tmp_path):
    groups = group_runs([read_run(p) for p in find_runs([str(runs / "runs")])])
    png = plot_curves(groups, "map@r", tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    page = plot_curves(groups, "map@r", tmp_path / "curves.html").read_text()
    assert "data:image/png;base64," in page
    with pytest.raises(ValueError, match="no validation records with 'nmi'"):
        plot_curves(groups, "nmi", tmp_path / "x.png")

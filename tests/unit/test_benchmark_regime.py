"""The pretrained-trunk regime of the method studies (benchmarks/_regime.py, benchmarks/pretrained.py): every table of
the grid plans runs whose configs load, the method and its baseline share trunk, input, batch, optimiser and budget,
and the cells' summaries, CCP's stage report and the carried IDX files read back as written. No training."""

import argparse
import csv
import json

import numpy as np
import pytest
import yaml

from benchmarks import _report, _runs, carry, ccp
from benchmarks import pretrained as driver
from deepmetric.config import load_config, parse_overrides, to_yaml

SHARED = ("model", "augment", "optim", "schedule", "protocol", "data.classes_per_batch", "data.samples_per_class",
          "data.root", "train.max_steps", "train.eval_every_steps", "train.select_metric")  # fmt: skip


@pytest.fixture
def glyph_build(tmp_path):
    """A glyph build's index.csv and splits.json (no images: configs never read them)."""
    root = tmp_path / "glyphs"
    root.mkdir()
    chars = "eéèEaáAbBcçCdDoöO0123"
    rows = [{"path": f"U+{ord(c):04X}/f{f}.png", "label": i, "codepoint": ord(c), "char": c, "script": "Latin",
             "base_letter": c.lower()[0] if c.isalpha() else c, "font_id": f"f{f}", "font_family": "F",
             "font_style": "Regular"} for i, c in enumerate(chars) for f in range(3)]  # fmt: skip
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    folders = sorted({r["path"].split("/")[0] for r in rows})
    (root / "splits.json").write_text(json.dumps({"train": folders[::2], "test": folders[1::2]}))
    return root


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and v and not k.endswith(("params", "options")):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(yaml.safe_load(to_yaml(cfg)))
    return out


def _shared(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if k.startswith(SHARED) and not k.startswith("model.embedding_dim")}


@pytest.mark.parametrize("row", driver.GRID, ids=driver.KEYS)
def test_each_table_plans_pretrained_runs_that_share_all_but_the_method(row, glyph_build, tmp_path):
    args = argparse.Namespace(seeds=[0, 1], glyphs=str(glyph_build), glyph_fonts=0, runs=str(tmp_path / "runs"),
                              set=["train.device=cpu"])  # fmt: skip
    table = driver.plan(*row, args)
    assert table.command.startswith(f"`python -m benchmarks.{row[2]} ") and "--regime pretrained" in table.command
    configs = {r.run_dir: _flat(load_config(r.preset, parse_overrides(r.overrides))) for r in table.runs}
    first = next(iter(configs.values()))
    assert first["model.backbone"] == "efficientnet_lite0" and first["model.pretrained"] is True
    assert (first["protocol.val_by"], first["protocol.n_folds"], first["augment.size"]) == ("classes", 0, 64)
    assert first["train.device"] == "cpu"
    for flat in configs.values():
        assert _shared(flat) == _shared(first)
    for cell in table.cells:
        seeds = [configs[r.run_dir] for r in cell.runs]
        assert [c["train.seed"] for c in seeds] == [0, 1]
        assert all({**c, "train.seed": 0} == {**seeds[0], "train.seed": 0} for c in seeds)


def test_pretrained_regime_refuses_protocols_it_has_no_form_of(glyph_build):
    with pytest.raises(SystemExit, match="--regime pretrained runs the protocols"):
        ccp.setup(ccp.parser().parse_args(["--protocol", "glyphs_pretrained", "--regime", "pretrained"]))


def test_unique_keeps_the_first_of_a_folder_and_refuses_two_settings(tmp_path):
    a = _runs.Run(tmp_path / "p.yaml", {"train__seed": 0}, tmp_path / "r")
    assert _runs.unique([a, _runs.Run(tmp_path / "p.yaml", {"train__seed": 0}, tmp_path / "r")]) == [a]
    with pytest.raises(ValueError, match="planned twice"):
        _runs.unique([a, _runs.Run(tmp_path / "p.yaml", {"train__seed": 1}, tmp_path / "r")])


def _fake_run(folder, seed: int, value: float | None) -> _runs.Run:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": "x", "train": {"seed": seed, "device": "cpu"}}))
    if value is not None:
        (folder / "metrics.json").write_text(json.dumps({"test": {"map@r": value}}))
    return _runs.Run(folder / "p.yaml", {}, folder)


def test_summary_is_mean_and_std_of_the_finished_seeds(tmp_path):
    runs = [_fake_run(tmp_path / f"s{i}", i, v) for i, v in enumerate((0.5, 0.7, None))]
    assert _runs.summary(runs[:2], ["map@r", "nmi"]) == ["0.600 ± 0.141", "–"]
    assert _runs.summary(runs, ["map@r"]) == ["0.600 ± 0.141 (n=2)"]
    assert _runs.summary(runs[2:], ["map@r"]) == ["–"]


def test_summary_takes_the_validation_fold_for_part_of_the_seed(tmp_path):
    runs = [_fake_run(tmp_path / f"s{i}", i, 0.5) for i in range(2)]
    (runs[1].run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 1}, "protocol": {"fold": 1}}))
    (runs[0].run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 0}, "protocol": {"fold": 0}}))
    assert _runs.summary(runs, ["map@r"]) == ["0.500 ± 0.000"]


def test_summary_refuses_a_cell_whose_runs_differ_in_more_than_the_seed(tmp_path):
    runs = [_fake_run(tmp_path / f"s{i}", i, 0.5) for i in range(2)]
    (runs[1].run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 1, "max_steps": 9}}))
    with pytest.raises(ValueError, match="differ in more than the seed"):
        _runs.summary(runs, ["map@r"])


def test_projections_name_each_stage_end_and_its_effect_on_validation(tmp_path):
    records = [{"type": "eval", "split": "val", "step": 0, "baseline": True, "map@r": 0.1}]
    records += [{"type": "eval", "split": "val", "step": s, "map@r": v} for s, v in ((20, 0.5), (40, 0.6), (60, 0.55))]
    records += [{"type": "ccp_stage", "step": 60, "stage": 1}]
    records += [{"type": "eval", "split": "val", "step": s, "map@r": v} for s, v in ((80, 0.4), (100, 0.62))]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert ccp.stages(tmp_path) == 2
    assert ccp.projections(tmp_path) == ["step 60: best 0.600 → 0.400 → best 0.620"]


def test_carried_idx_files_read_back_as_written(tmp_path):
    from deepmetric.data.fashion_mnist import read_idx

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    carry._write_idx(tmp_path / "x.gz", images)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)
    carry._write_idx(tmp_path / "y.gz", images)
    assert (tmp_path / "x.gz").read_bytes() == (tmp_path / "y.gz").read_bytes()  # reproducible: no time stamp


def test_config_differences_skip_where_a_run_computed():
    stored = {"train": {"device": "cuda", "seed": 0}, "data": {"workers": 4}}
    wanted = {"train": {"device": "cpu", "seed": 1}, "data": {"workers": 0}}
    assert _report.config_differences(stored, wanted) == ["train.seed: 0 → 1"]

"""configs/glyphs/ are the pretrained-regime study runs of benchmarks/results/pretrained.md as presets: each loads to
the configuration of the study run it names, apart from where the data comes from (the presets render the glyphs
dataset; the studies read its export as a CSV build) and bookkeeping (name, seed, report, baseline scoring)."""

import argparse
from pathlib import Path

import pytest

from benchmarks import pretrained as driver
from deepmetric.config import load_config, parse_overrides

from .test_benchmark_regime import _flat, glyph_build  # noqa: F401 (a fixture)

GLYPHS = Path(__file__).resolve().parents[2] / "configs" / "glyphs"
STUDY_RUN = {  # preset → (table of the grid, its run's folder name before "-seed")
    "diva": ("diva-glyphs", "diva"), "margin_beta": ("diva-glyphs", "margin_beta"),
    "c2": ("ccp-glyphs", "c2"), "ccp_c2": ("ccp-glyphs", "ccp_c2"),
    "ms": ("ccp-glyphs", "ms"), "ccp_ms": ("ccp-glyphs", "ccp_ms"),
    **{f"{kind}_{loss}": ("eps-base", f"{kind}_{loss}") for kind in ("eps", "vanilla")
       for loss in ("triplet", "margin", "contrastive", "multi_similarity")},
}  # fmt: skip
DATA_SOURCE = ("name", "data.name", "data.root", "data.options", "data.channels", "data.load_size", "report.",
               "train.seed", "train.device", "train.baseline")  # fmt: skip


def test_every_glyph_preset_names_its_study_run():
    presets = {p.stem for p in GLYPHS.glob("*.yaml") if not p.name.startswith("_")}
    assert presets == set(STUDY_RUN)


@pytest.mark.parametrize("preset", sorted(STUDY_RUN))
def test_glyph_preset_is_its_study_run(preset, glyph_build, tmp_path):  # noqa: F811
    key, folder = STUDY_RUN[preset]
    args = argparse.Namespace(seeds=[0], glyphs=str(glyph_build), glyph_fonts=0, runs=str(tmp_path), set=[])
    table = driver.plan(*next(row for row in driver.GRID if row[0] == key), args)
    (run,) = [r for r in table.runs if r.run_dir.name == f"{folder}-seed0"]
    study = _flat(load_config(run.preset, parse_overrides(run.overrides)))
    mine = _flat(load_config(GLYPHS / f"{preset}.yaml"))
    assert mine["data.name"] == "glyphs" and mine["model.pretrained"] is True
    differ = {k: (mine.get(k), study.get(k)) for k in {*mine, *study}
              if not k.startswith(DATA_SOURCE) and mine.get(k) != study.get(k)}  # fmt: skip
    assert not differ, f"configs/glyphs/{preset}.yaml (left) vs the study run {run.run_dir.name} (right): {differ}"

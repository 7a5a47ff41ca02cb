"""Every paper-protocol preset (CUB200, CARS196, SOP: DiVA and its margin baseline, EPS and its vanilla twins; the MLRC
presets of CCP and its baselines, In-Shop included) trains and evaluates end to end on a tiny fixture in the
dataset's official layout. The ImageNet ResNet-50 (timm, a GPU machine) is swapped for the small CNN and the sizes
shrink; method, loss, miner, sampler, protocol and schedule are the preset's own."""

import json
import math
from pathlib import Path

import pytest

import deepmetric
from deepmetric.config import load_config
from tests.unit.data.layouts import write_cars, write_cub, write_inshop, write_sop

CONFIGS = Path(__file__).parents[2] / "configs"
PAPERS = ("cub200", "cars196", "sop")
PRESETS = [p for d in (*PAPERS, "mlrc") for p in sorted((CONFIGS / d).glob("*.yaml")) if not p.name.startswith("_")]
SMALL = {
    "model__backbone": "small_cnn", "model__pretrained": False, "model__width": 8, "augment__size": 16,
    "augment__resize": 20, "data__load_size": 24, "data__classes_per_batch": 4, "data__workers": 0,
    "data__eval_batch_size": 64, "train__epochs": 1, "train__max_steps": 3, "train__log_every": 1,
    "train__amp": False, "report__enabled": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {  # CUB and CARS split by class number: 100 and 98 training classes
        "cub200": write_cub(root / "cub200", train=(400, 100), test=(24, 6), images=True),
        "cars196": write_cars(root / "cars196", train=(392, 98), test=(24, 6), images=True),
        "sop": write_sop(root / "sop", train=(80, 20), test=(24, 6), images=True),
        "inshop": write_inshop(root / "inshop", train=(80, 20), query=(12, 6), gallery=(12, 6), images=True),
    }


def test_every_dataset_has_diva_its_baseline_and_eps_with_twins():
    names = {(p.parent.name, p.stem) for p in PRESETS}
    losses = ("triplet", "margin", "contrastive", "multi_similarity")
    expected = {"diva", "margin"} | {f"{kind}_{loss}" for kind in ("eps", "vanilla") for loss in losses}
    for dataset in PAPERS:
        assert {(dataset, n) for n in expected} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_trains_and_evaluates(preset, fixtures, tmp_path):
    cfg = load_config(preset)
    assert cfg.data.name in fixtures and cfg.model.backbone == "timm:resnet50" and cfg.model.pretrained
    root = str(fixtures[cfg.data.name])
    run, metrics = deepmetric.train(preset, output=tmp_path / "run", quiet=True, data__root=root, **SMALL)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert 0 < metrics["test"]["recall@1"] <= 1 and 0 < metrics["val"]["map@r"] <= 1
    if cfg.method.name == "diva":  # each head scored beside the combination
        assert 0 < metrics["test"]["selfsimilarity/map@r"] <= 1

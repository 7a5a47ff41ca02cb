"""The pretrained presets end to end on small data: configs/demo.yaml (glyphs) and configs/own_data.yaml (a folder of
the user's images) build the pretrained EfficientNet-Lite0, score the baseline (with the trunk's pooled features),
train a few steps and evaluate on unseen classes."""

import json
import string

import numpy as np
import pytest
from PIL import Image

import deepmetric
from deepmetric.cli import main

from ..conftest import dejavu_font_dir

DEJAVU = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf",
          "DejaVuSerif-Bold.ttf")  # fmt: skip


@pytest.fixture(scope="module")
def font_dir(tmp_path_factory):
    return dejavu_font_dir(tmp_path_factory, DEJAVU)


def test_demo_preset(tmp_path, font_dir, capsys):
    chars = string.ascii_letters + string.digits
    options = (f"data.options={{font_dirs: [{font_dir}], chars: '{chars}', min_images: 4, styles_per_family: null, "
               f"progress: false}}")  # fmt: skip
    code = main(["train", "configs/demo.yaml", options, f"data.root={tmp_path / 'cache'}", "train.max_steps=4",
                 "train.eval_every_steps=2", "data.classes_per_batch=8", "augment.size=32", "report.tsne_points=50",
                 "--output", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "baseline: pretrained trunk, pooled" in out and "baseline: model as built" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["baseline"]) == {"val", "test", "trunk"} and set(metrics["baseline"]["trunk"]) == {"val", "test"}
    assert metrics["protocol"] == "official" and metrics["splits"]["test"]["classes"] >= 20
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "normalization: edge" in config  # resolved from the backbone, stored resolved
    page = (tmp_path / "run" / "report.html").read_text()
    assert "test, pretrained trunk pooled (no head)" in page and "test, before training" in page


def test_own_data_preset_on_a_folder(tmp_path):
    """A folder of 12 classes of real photographs' crops: the preset holds out half the classes for test (fewer than 10
    training classes: validation holds out images of the training classes)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c in range(12):
        (root / f"class_{c:02d}").mkdir(parents=True)
        photo = photos[c % 2]
        y, x = 30 * (c // 2), 40 * (c // 2)
        for i in range(10):
            dy, dx = rng.integers(0, 40, size=2)
            crop = photo[y + dy : y + dy + 160, x + dx : x + dx + 160]
            Image.fromarray(crop).save(root / f"class_{c:02d}" / f"{i}.jpg")
    _, metrics = deepmetric.train("configs/own_data.yaml", output=tmp_path / "run", quiet=True,
                                        data__root=str(root), train__max_steps=3, train__eval_every_steps=3,
                                        data__classes_per_batch=4, data__workers=0, augment__size=64,
                                        augment__resize=72, data__load_size=72, report__enabled="false")  # fmt: skip
    assert metrics["protocol"] == "zero_shot"
    assert metrics["splits"]["test"]["classes"] == 6
    assert metrics["splits"]["train"]["classes"] == metrics["splits"]["val"]["classes"] == 6
    assert "trunk" in metrics["baseline"] and metrics["steps"] == 3


@pytest.mark.parametrize("preset", ["diva", "eps_triplet", "ccp_c2"])
def test_glyph_presets_train_on_the_glyphs(preset, tmp_path, font_dir):
    """configs/glyphs/: DiVA (two views), EPS (the base-letter superclass protocol), CCP (stages) train and score the
    unseen characters; the superclass protocol scores them with fine and coarse labels."""
    chars = string.ascii_letters + string.digits + "éèáàöüçñ"
    options = (f"data.options={{font_dirs: [{font_dir}], chars: '{chars}', min_images: 4, styles_per_family: null, "
               f"progress: false}}")  # fmt: skip
    code = main(["train", f"configs/glyphs/{preset}.yaml", options, f"data.root={tmp_path / 'cache'}",
                 "train.max_steps=4", "train.eval_every_steps=2", "data.classes_per_batch=6", "augment.size=32",
                 "report.enabled=false", "--output", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["splits"]["test"]["classes"] >= 10
    test = metrics["test"]
    assert ("coarse/recall@1" in test and "fine/recall@1" in test) if preset == "eps_triplet" else "map@r" in test

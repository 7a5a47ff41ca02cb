"""File images are decoded at their own size unless data.load_size says otherwise: a folder of 28 px images trained
with the default config is not upsampled to 256 px first; an explicit size far from the images' warns, naming both."""

import warnings

import pytest

import deepmetric
from deepmetric.config import load_config
from deepmetric.run import build_data
from tests.unit.data.layouts import tiny_image

SETTINGS = dict(
    name="folder", data__name="folder", data__classes_per_batch=2, data__samples_per_class=4,
    protocol__name="zero_shot", protocol__train_classes="[0,1,2]", protocol__val_by="none",
    augment__train="none", augment__eval="none", augment__size=28, model__width=4, model__embedding_dim=8,
    train__max_steps=2, report__enabled=False,
)  # fmt: skip


@pytest.fixture
def folder(tmp_path):
    for c in range(6):
        for j in range(5):
            tiny_image(tmp_path / "imgs" / f"c{c}" / f"{j}.png", 10 * c + j, size=(28, 28))
    return tmp_path / "imgs"


def _cfg(folder, **extra):
    overrides = {**SETTINGS, "data__root": str(folder), **extra}
    return load_config(None, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


def test_default_load_size_follows_the_images(folder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        data = build_data(_cfg(folder))
    assert data.train_set.load_size == 28 and data.train_set[0]["image"].shape[-2:] == (28, 28)
    assert data.inference_meta(None)["load_size"] == 28
    run_dir, _ = deepmetric.train(None, output=tmp_path / "run", quiet=True, data__root=str(folder), **SETTINGS)
    from deepmetric.training.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["meta"]["load_size"] == 28


def test_a_load_size_far_from_the_images_warns(folder):
    with pytest.warns(UserWarning, match=r"data\.load_size=256 but the images .* about 28 px"):
        data = build_data(_cfg(folder, data__load_size=256))
    assert data.train_set.load_size == 256

"""Batched kornia augmentation: shapes, seeding, views, normalisation, bad presets."""

import pytest
import torch

from deepmetric.data import AugmentConfig, BatchAugment


def batch(n=4, c=3, h=20, w=24):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("preset", ["random_resized_crop", "pad_crop", "none"])
def test_train_presets_shapes(preset):
    aug = BatchAugment(AugmentConfig(train=preset, size=16, color_jitter=0.3), train=True)
    out = aug(batch(), seed=1)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32


def test_eval_resize_center_crop_is_deterministic():
    aug = BatchAugment(AugmentConfig(size=16, resize=18), train=False)
    x = batch()
    assert aug(x).shape == (4, 3, 16, 16) and torch.equal(aug(x), aug(x))


def test_seed_fixes_the_augmentation_and_restores_global_rng():
    aug = BatchAugment(AugmentConfig(size=16), train=True)
    x = batch()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = aug(x, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, aug(x, seed=7)) and not torch.equal(a, aug(x, seed=8))


def test_two_views_are_independent():
    aug = BatchAugment(AugmentConfig(size=16), train=True)
    v1, v2 = aug(batch(), seed=3, views=2)
    assert v1.shape == v2.shape and not torch.equal(v1, v2)


def test_normalisation_presets():
    x = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    x[:, 0] = 0  # red 0, green and blue 255
    cfg = AugmentConfig(eval="none", size=4)
    imagenet = BatchAugment(cfg, train=False)(x)
    assert imagenet[0, 0, 0, 0] == pytest.approx(-0.485 / 0.229, abs=1e-5)
    cfg.normalization = "bninception"
    bgr = BatchAugment(cfg, train=False)(x)
    assert bgr[0, 2, 0, 0] == pytest.approx(0 - 128.0) and bgr[0, 0, 0, 0] == pytest.approx(255 - 104.0)
    gray = BatchAugment(AugmentConfig(eval="none", size=4, normalization="gray"), train=False)(x[:, :1])
    assert gray.shape == (1, 1, 4, 4) and gray.min() == -1
    rgb_from_gray = BatchAugment(AugmentConfig(eval="none", size=4), train=False)(x[:, :1])
    assert rgb_from_gray.shape == (1, 3, 4, 4)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("train", "mixup", "augment.train"),
        ("eval", "tencrop", "augment.eval"),
        ("normalization", "coco", "augment.normalization"),
        ("size", 0, "must be positive"),
    ],
)
def test_bad_config(field, value, match):
    cfg = AugmentConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        BatchAugment(cfg, train=True)


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(AugmentConfig(), train=False)(torch.zeros(1, 3, 8, 8))


def test_pad_crop_resizes_other_sizes_first_then_shifts_by_padding():
    """32 px images at size 64 (the pretrained glyph presets): upsampled, then shifted by at most `padding` px, never
    pasted small into a black 64 × 64 canvas."""
    x = torch.full((2, 1, 32, 32), 200, dtype=torch.uint8)
    unit = {"eval": "none", "size": 64, "normalization": "unit", "flip": False}
    still = BatchAugment(AugmentConfig(train="pad_crop", padding=0, **unit), train=True)(x, seed=0)
    upsampled = BatchAugment(AugmentConfig(**unit), train=False)(x)
    assert still.shape == (2, 1, 64, 64) and torch.allclose(still, upsampled)
    shifted = BatchAugment(AugmentConfig(train="pad_crop", padding=4, **unit), train=True)(x, seed=0)
    bright = (shifted > 0.5).float().mean(dim=(1, 2, 3))  # at most 4 of 64 rows and columns padded black
    assert bright.min() >= (60 / 64) ** 2 - 1e-6

"""The glyphs dataset, built from matplotlib's bundled DejaVu fonts (hermetic: no system font packages needed)."""

import unicodedata

import numpy as np
import pytest
import torch
from fontTools.ttLib import TTFont
from PIL import ImageFont

from deepmetric.data import DATASETS, glyphs, load_dataset, make_splits

from ...conftest import dejavu_font_dir

DEJAVU = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
CHARS = "0137AaBbEeéÉGgŁłЖжДдλωΣ"
COPTIC_SHEI = "\u03e2"  # in DejaVu Sans (regular and bold) only, not in DejaVu Serif or Sans Mono
CJK = "\u4e00"  # in no DejaVu face


@pytest.fixture(scope="module")
def font_dir(tmp_path_factory):
    """A folder of links to four DejaVu faces that matplotlib ships."""
    return dejavu_font_dir(tmp_path_factory, DEJAVU)


def small(root, font_dir, **options):
    options = {"font_dirs": [font_dir], "chars": CHARS, "min_images": 2, "workers": 1, "progress": False, **options}
    return glyphs.load(root, **options)


def test_table(tmp_path, font_dir):
    t = small(tmp_path, font_dir)
    n, c = len(t), len(CHARS)
    assert t.name == "glyphs" and t.images.dtype == torch.uint8 and t.images.shape == (n, 1, 32, 32)
    assert sorted(set(t.labels.tolist())) == list(range(c))  # every character drawn, labels contiguous
    assert [t.class_names[k][0] for k in range(c)] == sorted(CHARS)  # in code-point order
    assert t.class_names[t.labels[t.extra["codepoint"] == ord("é")][0]] == "é LATIN SMALL LETTER E WITH ACUTE"
    assert np.bincount(t.labels).max() <= 4 and np.bincount(t.labels).min() >= 2  # one image per face at most
    for key in ("font", "font_family", "script", "codepoint"):
        assert len(t.extra[key]) == n
    assert set(t.extra["font_family"]) == {"DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono"}
    assert t.extra["script"][t.extra["codepoint"] == ord("ж")][0] == "Cyrillic"
    # coarse labels: the base letter, shared by e and é (not by E)
    coarse = {chr(cp): t.coarse_names[k] for cp, k in zip(t.extra["codepoint"], t.coarse_labels, strict=True)}
    assert coarse["é"] == coarse["e"] == "e" and coarse["É"] == "E" and coarse["ł"] == "ł"
    # white glyph on black: the margin is black, every image has ink, the ink is centred
    images = t.images[:, 0].numpy()
    assert max(images[:, :2].max(), images[:, -2:].max(), images[:, :, :2].max(), images[:, :, -2:].max()) == 0
    assert (images.reshape(n, -1).max(1) > 128).all()
    for image in images[:20]:
        rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
        assert abs((rows[0] + rows[-1]) - 31) <= 2 and abs((cols[0] + cols[-1]) - 31) <= 2
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) >= 26  # scaled to fill 28 px


def test_class_disjoint_split(tmp_path, font_dir):
    t = small(tmp_path, font_dir)
    train, test = set(t.labels[t.split == "train"]), set(t.labels[t.split == "test"])
    assert train and test and not train & test and train | test == set(range(len(CHARS)))
    assert set(t.split) == {"train", "test"}
    for cp, split in zip(t.extra["codepoint"], t.split, strict=True):
        assert split == glyphs.split_of(int(cp))
    splits = make_splits(t)  # the default protocol is the official split: zero-shot over characters
    assert splits.protocol == "official"
    assert not set(t.labels[splits.train]) & set(t.labels[splits.test])
    assert not set(t.labels[splits.val]) & set(t.labels[splits.test])
    assert set(t.labels[splits.test]) == test and set(t.labels[splits.val]) <= train


def test_default_charset_and_split():
    cps = glyphs.charset()
    assert len(cps) == 370 and cps == sorted(cps)
    assert not {chr(c) for c in cps} & glyphs.HOMOGLYPHS and {"é", "Ж", "λ", "ſ"} <= {chr(c) for c in cps}
    assert all(unicodedata.category(chr(c)) in ("Lu", "Ll", "Nd") for c in cps)
    train = [c for c in cps if glyphs.split_of(c) == "train"]
    assert 0.45 < len(train) / len(cps) < 0.55
    assert glyphs.split_of(ord("a")) == glyphs.split_of(ord("a"))  # a function of the code point only


def test_cache_reused_and_invalidated(tmp_path, font_dir, monkeypatch):
    first = small(tmp_path, font_dir, chars=CHARS + COPTIC_SHEI, min_images=1)
    assert len(list(tmp_path.glob("glyphs-32px-*.npz"))) == 1 and len(list(tmp_path.glob("*.json"))) == 1

    def no_rendering(task):
        raise AssertionError("rendered again")

    monkeypatch.setattr(glyphs, "_render_face", no_rendering)
    again = small(tmp_path, font_dir, chars=CHARS + COPTIC_SHEI, min_images=1)
    assert torch.equal(first.images, again.images) and (first.labels == again.labels).all()
    fewer = small(tmp_path, font_dir, chars=CHARS + COPTIC_SHEI, min_images=3)  # applied to the cached data
    assert len(fewer.class_names) == len(first.class_names) - 1 == len(CHARS)
    with pytest.raises(AssertionError, match="rendered again"):
        small(tmp_path, font_dir, chars=CHARS + COPTIC_SHEI, size=24)  # another size is another cache entry
    with pytest.raises(AssertionError, match="rendered again"):
        small(tmp_path, font_dir, chars=CHARS)  # and other characters


def test_other_size_and_max_fonts(tmp_path, font_dir):
    t = small(tmp_path, font_dir, size=20, max_fonts=2, min_images=1)
    assert t.images.shape[1:] == (1, 20, 20) and len(set(t.extra["font"])) == 2


def test_deterministic(tmp_path, font_dir):
    a = small(tmp_path / "a", font_dir)
    b = small(tmp_path / "b", font_dir, workers=2)  # the pool's result does not depend on its size
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert (a.labels == b.labels).all() and (a.split == b.split).all()
    assert a.extra["font"].tolist() == b.extra["font"].tolist() and a.class_names == b.class_names
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())


def test_missing_characters_are_not_rendered(tmp_path, font_dir):
    """A face draws a character only when its cmap maps it: no .notdef boxes for the others."""
    t = small(tmp_path, font_dir, chars=CHARS + COPTIC_SHEI + CJK, min_images=1)
    codepoints = t.extra["codepoint"]
    assert ord(CJK) not in codepoints
    having = set()
    for name in DEJAVU:
        font = TTFont(font_dir / name)
        if ord(COPTIC_SHEI) in font.getBestCmap():
            having.add(f"{font['name'].getDebugName(1)} {font['name'].getDebugName(2)}")
    assert 0 < len(having) < len(DEJAVU)
    assert set(t.extra["font"][codepoints == ord(COPTIC_SHEI)]) == having
    mono = ImageFont.truetype(str(font_dir / "DejaVuSansMono.ttf"), 96, layout_engine=ImageFont.Layout.BASIC)
    tofu = glyphs.render_glyph(mono, CJK, 32)  # what Pillow draws for a character the face lacks
    assert tofu is not None
    assert not (t.images[:, 0].numpy() == tofu).all(axis=(1, 2)).any()


def test_no_fonts(tmp_path):
    (tmp_path / "fonts").mkdir()
    with pytest.raises(FileNotFoundError, match="make glyph-fonts") as e:
        glyphs.load(tmp_path / "cache", font_dirs=[tmp_path / "fonts"], progress=False)
    assert "apt-get install" in str(e.value) and "fonts-urw-base35" in str(e.value)


def test_too_few_classes(tmp_path, font_dir):
    with pytest.raises(ValueError, match=r"only 0 glyph classes .* 4 font faces found .* fewer than 20 faces"):
        small(tmp_path, font_dir, min_images=20)


def test_registered(tmp_path, font_dir):
    assert DATASETS["glyphs"] is glyphs.load
    t = load_dataset("glyphs", tmp_path, font_dirs=[font_dir], chars="AbЖλ", min_images=1, progress=False)
    assert len(t.class_names) == 4

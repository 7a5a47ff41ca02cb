import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


def dejavu_font_dir(tmp_path_factory, names: tuple[str, ...]):
    """A folder of links to DejaVu faces that matplotlib ships (hermetic glyph tests: no system font packages)."""
    import matplotlib

    folder = tmp_path_factory.mktemp("fonts")
    source = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    for name in names:
        os.symlink(os.path.join(source, name), folder / name)
    return folder


def write_digit_pngs(root, per_class: int, size: int | None = None):
    """scikit-learn's 8 × 8 digits as PNG files in ``root/digit_N/K.png`` (``per_class`` of each class, resized to
    ``size`` px when given); returns ``root``."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    counts: dict[int, int] = {}
    for img, label in zip(d.images, d.target, strict=True):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / f"digit_{label}"
        folder.mkdir(exist_ok=True)
        picture = Image.fromarray((img * 255 / 16).astype(np.uint8))
        (picture.resize((size, size)) if size else picture).save(folder / f"{counts[label]}.png")
    return root

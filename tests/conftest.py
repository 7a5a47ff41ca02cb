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

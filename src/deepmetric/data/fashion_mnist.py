"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 70,000 28 × 28 grayscale images of 10 clothing classes.

The four IDX files are looked up, in order, in an explicit ``root``, ``$DEEPMETRIC_DATA`` (and its
``fashion_mnist/`` folder), the data directory of the Debian package ``dataset-fashion-mnist``, the user cache
directory (``$XDG_CACHE_HOME/deepmetric/fashion_mnist``), and finally downloaded from the upstream release into the
cache; downloads are verified by the SHA-256 of their decompressed IDX content (independent of how a mirror
gzipped them). Files may be gzipped or not.

Coarse labels (the superclass protocol, ``docs/datasets.md``): 0 tops (T-shirt/top, pullover, dress, coat,
shirt), 1 footwear (sandal, sneaker, ankle boot), 2 trousers and bags (trouser, bag).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..registry import DATASETS
from .table import ImageTable

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
COARSE_NAMES = {0: "tops", 1: "footwear", 2: "trousers and bags"}
COARSE_MAP = {0: 0, 1: 2, 2: 0, 3: 0, 4: 0, 5: 1, 6: 0, 7: 1, 8: 2, 9: 1}
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the decompressed IDX files (measured on Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1,
# which repackages the upstream release; the .gz bytes differ between mirrors, the content does not)
CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIRS = ("/usr/share/datasets/fashion-mnist",)  # `dpkg -L dataset-fashion-mnist`
INSTALL_HINT = (
    "Get the files with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four .gz files "
    f"from {UPSTREAM_URL} into one of the folders above, or pass root=DIR."
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepmetric" / "fashion_mnist"


def candidate_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for the IDX files, in order."""
    dirs = []
    if root:
        dirs.append(Path(root))
        dirs.append(Path(root) / "fashion_mnist")
    env = os.environ.get("DEEPMETRIC_DATA")
    if env:
        dirs += [Path(env), Path(env) / "fashion_mnist"]
    dirs += [Path(d) for d in DEBIAN_DIRS]
    dirs.append(cache_dir())
    return dirs


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def locate(root=None, download: bool = True) -> dict[tuple[str, str], Path]:
    """Paths of the four files, from the first folder holding all of them; downloads as the last resort."""
    tried = []
    for folder in candidate_dirs(root):
        found = {key: _find(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found
        tried.append(str(folder))
    if download:
        try:
            return _download(cache_dir())
        except (OSError, ValueError) as e:  # network errors are OSError subclasses
            tried.append(f"download from {UPSTREAM_URL} ({e})")
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found. Tried, in order:\n  " + "\n  ".join(tried) + "\n" + INSTALL_HINT
    )


def verify_content(stem: str, gz_bytes: bytes) -> None:
    """Raise ValueError unless the decompressed ``gz_bytes`` have the expected SHA-256 for file ``stem``."""
    digest = hashlib.sha256(gzip.decompress(gz_bytes)).hexdigest()
    if digest != CONTENT_SHA256[stem]:
        raise ValueError(f"{stem}.gz: content SHA-256 {digest} does not match the expected {CONTENT_SHA256[stem]}")


def _download(folder: Path, fetch=None) -> dict[tuple[str, str], Path]:
    """Download the four files into ``folder`` (atomically, verified); ``fetch(url) -> bytes`` is replaceable."""
    fetch = fetch or _fetch
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, stem in FILES.items():
        target = folder / (stem + ".gz")
        if not target.is_file():
            data = fetch(UPSTREAM_URL + stem + ".gz")
            verify_content(stem, data)
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)
        out[key] = target
    return out


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; the header gives dtype and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX data type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: truncated or corrupt ({len(data) - offset} bytes of data, expected {expected})")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


@DATASETS.register("fashion_mnist")
def load(root=None, download: bool = True) -> ImageTable:
    """All 70,000 images: official split ``train`` (60,000) and ``test`` (10,000)."""
    paths = locate(root, download)
    images, labels, split = [], [], []
    for part in ("train", "test"):
        x = read_idx(paths[(part, "images")])
        y = read_idx(paths[(part, "labels")])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{paths[(part, 'images')]}: {x.shape[0]} images but {y.shape[0]} labels")
        images.append(x)
        labels.append(y.astype(np.int64))
        split += [part] * len(y)
    labels = np.concatenate(labels)
    return ImageTable(
        name="fashion_mnist",
        labels=labels,
        split=np.array(split, dtype=object),
        images=torch.from_numpy(np.concatenate(images)).unsqueeze(1),
        coarse_labels=np.vectorize(COARSE_MAP.get)(labels),
        class_names=dict(enumerate(CLASS_NAMES)),
        coarse_names=COARSE_NAMES,
        root=str(paths[("train", "images")].parent),
    )

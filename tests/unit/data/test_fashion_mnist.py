"""Fashion-MNIST: the real IDX files, the IDX reader, the lookup order and the verified download."""

import gzip

import numpy as np
import pytest

from deepmetric.data import fashion_mnist, load_dataset
from deepmetric.data.fashion_mnist import FILES, read_idx


def real_files_available():
    try:
        fashion_mnist.locate(download=False)
    except FileNotFoundError:
        return False
    return True


def write_idx(path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_release(folder, n_train=6, n_test=4, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        stem_img, stem_lab = FILES[(part, "images")], FILES[(part, "labels")]
        write_idx(folder / (stem_img + (".gz" if gz else "")), rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / (stem_lab + (".gz" if gz else "")), np.arange(n) % 10, gz)
    return folder


@pytest.mark.skipif(
    not real_files_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
def test_real_files():
    t = load_dataset("fashion_mnist")
    assert len(t) == 70_000 and t.images.shape == (70_000, 1, 28, 28)
    assert t.summary()["splits"] == {
        "train": {"images": 60_000, "classes": 10},
        "test": {"images": 10_000, "classes": 10},
    }
    assert np.bincount(t.labels).tolist() == [7_000] * 10
    assert t.class_names[9] == "Ankle boot" and t.coarse_names[t.coarse_labels[t.labels == 9][0]] == "footwear"
    assert 0 < float(t.images.float().mean()) < 255


@pytest.mark.parametrize("gz", [True, False])
def test_reads_plain_and_gzipped_idx(tmp_path, gz):
    t = fashion_mnist.load(fake_release(tmp_path / "fm", gz=gz), download=False)
    assert len(t) == 10 and t.split.tolist() == ["train"] * 6 + ["test"] * 4
    assert t.labels.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_corrupt_idx_files(tmp_path):
    folder = fake_release(tmp_path, gz=False)
    f = folder / FILES[("train", "images")]
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(f)
    f.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(f)


def test_lookup_order_root_then_environment(tmp_path, monkeypatch):
    env = fake_release(tmp_path / "env" / "fashion_mnist", n_train=3)
    explicit = fake_release(tmp_path / "explicit", n_train=5)
    monkeypatch.setenv("DEEPMETRIC_DATA", str(tmp_path / "env"))
    assert len(fashion_mnist.load(download=False)) == 7 and fashion_mnist.load(download=False).root == str(env)
    assert len(fashion_mnist.load(explicit, download=False)) == 9


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No installed copy anywhere, an empty cache, and no network."""
    monkeypatch.delenv("DEEPMETRIC_DATA", raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIRS", (str(tmp_path / "debian"),))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url):
        raise OSError("network is unreachable")

    monkeypatch.setattr(fashion_mnist, "_fetch", offline)
    return tmp_path


def test_error_lists_every_place_tried(nowhere):
    with pytest.raises(FileNotFoundError) as e:
        fashion_mnist.load(nowhere / "given")
    msg = str(e.value)
    for place in ("given", "debian", "cache/deepmetric/fashion_mnist", "network is unreachable"):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_download_is_verified_and_cached(nowhere, monkeypatch):
    source = fake_release(nowhere / "mirror", n_train=6, n_test=4)
    contents = {f.name: f.read_bytes() for f in source.iterdir()}
    digests = {stem: __import__("hashlib").sha256(gzip.decompress(contents[stem + ".gz"])).hexdigest()
               for stem in FILES.values()}  # fmt: skip
    monkeypatch.setattr(fashion_mnist, "CONTENT_SHA256", digests)
    monkeypatch.setattr(fashion_mnist, "_fetch", lambda url: contents[url.rsplit("/", 1)[1]])
    t = fashion_mnist.load()
    assert len(t) == 10 and (nowhere / "cache" / "deepmetric" / "fashion_mnist").is_dir()
    # a corrupted mirror is refused and nothing is left behind
    monkeypatch.setattr(fashion_mnist, "cache_dir", lambda: nowhere / "cache2")
    monkeypatch.setattr(fashion_mnist, "_fetch", lambda url: gzip.compress(b"\x00\x00\x08\x01" + bytes(8)))
    with pytest.raises(FileNotFoundError, match="content SHA-256"):
        fashion_mnist.load()
    assert not list((nowhere / "cache2").glob("*.gz"))

"""The Milvus backend (issue #20 item 4) on a real Milvus Lite file: build, search and --where filters (exact on
FLAT, checked against brute force), delete and update, serve, a killed `index add` that leaves search as before,
and the errors for an unreachable --uri, a missing pymilvus and a Lite file open in another process."""

import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import deepmetric
from deepmetric.cli import main
from deepmetric.errors import ConfigError
from deepmetric.retrieval import EmbeddingIndex
from deepmetric.retrieval.milvus import MilvusIndex

from .test_index_integrity import kill_at
from .test_index_maintenance import N, build, is_true_top_k, search_json, train_tiny_run, write_catalogue


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def catalogue(run):
    images = run[1]
    rows = write_catalogue(images / "milvus_catalogue.csv", images)
    return images / "milvus_catalogue.csv", rows


@pytest.fixture(scope="module")
def vectors(run, catalogue):
    paths = [str(catalogue[0].parent / r["path"]) for r in catalogue[1]]
    return dict(zip(paths, deepmetric.load(run[0]).embed(paths).numpy(), strict=True))


@pytest.fixture(scope="module")
def built(run, catalogue, tmp_path_factory):
    """One flat Milvus index of the catalogue (INDEX/milvus.db), built by the CLI; tests copy it."""
    folder = tmp_path_factory.mktemp("milvus") / "index"
    build(run, catalogue[0], folder, "--backend", "milvus")
    return folder


@pytest.fixture
def index_dir(built, tmp_path):
    return Path(shutil.copytree(built, tmp_path / "index"))


def close(folder) -> None:
    """Release the Lite file in this process (Milvus Lite opens a file in one process at a time)."""
    EmbeddingIndex.load(folder).close()


def test_build_search_and_where_on_milvus_lite(run, catalogue, vectors, index_dir, capsys):
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["backend"] == "milvus" and meta["lite_file"] == "milvus.db" and meta["uri"] is None
    assert meta["committed"] == 1 and meta["count"] == N and meta["collection"].startswith("deepmetric_")
    assert (index_dir / "milvus.db").exists() and not list(index_dir.glob("gen-*"))
    rows = {str(catalogue[0].parent / r["path"]): r for r in catalogue[1]}
    query = next(p for p in vectors if "digit_6" in p)
    (entry,) = search_json(capsys, index_dir, query, "-k", "4")
    assert is_true_top_k([h["id"] for h in entry["results"]], vectors, query, 4, lambda i: True)
    hit = entry["results"][0]
    assert hit["id"] == query and abs(hit["distance"]) < 1e-3 and hit["label"] == "6"
    assert hit["metadata"] == {k: rows[query][k] for k in ("shape", "price", "shelf") if rows[query][k] != ""}
    where = "shape == 'round' and price < 60 and shelf != 's1'"

    def keep(i):
        return rows[i]["shape"] == "round" and rows[i]["price"] < 60 and rows[i]["shelf"] not in ("", "s1")

    (entry,) = search_json(capsys, index_dir, query, "-k", "5", "--where", where)
    assert is_true_top_k([h["id"] for h in entry["results"]], vectors, query, 5, keep)
    assert entry["matching"] == sum(keep(i) for i in vectors) and entry["complete"] is True
    with EmbeddingIndex.load(index_dir) as index:
        assert isinstance(index, MilvusIndex) and index.kind == "flat" and len(index) == N
        assert sorted(index.ids) == sorted(rows) and index.fields() == ["id", "label", "price", "shape", "shelf"]
        hits = index.query(vectors[query][None], 3, where=f"id in [{query!r}] or label == '9'")[0]
        assert is_true_top_k([h["id"] for h in hits], vectors, query, 3, lambda i: i == query or rows[i]["label"] == 9)
        with pytest.raises(ConfigError, match=r"unknown field 'colour'.*id, label, price, shape, shelf"):
            index.query(vectors[query][None], 3, where="colour == 'red'")
        with pytest.raises(ConfigError, match="does not parse"):
            index.count("shape = 'round'")
        with pytest.raises(ConfigError, match="do not fit this index of dimension 16"):
            index.add(np.ones((2, 3)), ["a", "b"])


@pytest.mark.parametrize(("kind", "options"), [("ivf", ["--nprobe", "64"]), ("hnsw", ["--ef-search", "64"])])
def test_ivf_and_hnsw_kinds(run, catalogue, vectors, tmp_path, capsys, kind, options):
    folder = build(run, catalogue[0], tmp_path / "index", "--backend", "milvus", "--kind", kind, *options)
    rows = {str(catalogue[0].parent / r["path"]): r for r in catalogue[1]}
    query = next(p for p in vectors if "digit_0" in p)
    (entry,) = search_json(capsys, folder, query, "-k", "5", "--where", "shape == 'straight'")
    found = [h["id"] for h in entry["results"]]  # small enough for these to be exact
    assert is_true_top_k(found, vectors, query, 5, lambda i: rows[i]["shape"] == "straight")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == kind and (kind != "ivf" or meta["params"]["nlist"] == int(2 * np.sqrt(N)))
    index = EmbeddingIndex.load(folder)
    client = index._connect()
    described = client.describe_index(index.collection, "vector")  # what Milvus built, not what we asked for
    expected = {"ivf": {"nlist": int(2 * np.sqrt(N))}, "hnsw": {"M": 32, "efConstruction": 80}}[kind]
    assert {k: int(v) for k, v in described.get("params", {}).items()} == expected, described
    index.close()


def test_delete_and_update_on_milvus(run, catalogue, index_dir, tmp_path, capsys):
    images = catalogue[0].parent
    gone = str(images / "digit_1" / "1.png")
    assert main(["index", "delete", str(index_dir), "--ids", gone, "digit_1/2.png"]) == 0
    assert main(["index", "delete", str(index_dir), "--where", "shape == 'round' and price >= 40"]) == 0
    dropped = 2 + sum(r["shape"] == "round" and r["price"] >= 40 for r in catalogue[1])
    with EmbeddingIndex.load(index_dir) as index:
        assert len(index) == N - dropped == len(index.ids) and gone not in index.ids
        assert index.count("shape == 'round' and price >= 40") == 0
    capsys.readouterr()
    assert main(["index", "delete", str(index_dir), "--ids", "nope.png"]) == 2
    assert "not in the index: nope.png" in capsys.readouterr().err
    # update: one image changes (pixels and metadata), one is new
    changed = images / "digit_4" / "1.png"
    new = tmp_path / "new.png"
    Image.open(changed).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(new)
    rows = [{"path": str(changed), "label": 4, "shape": "straight", "price": 777, "shelf": "moved"},
            {"path": str(new), "label": 4, "shape": "straight", "price": 778, "shelf": "moved"}]  # fmt: skip
    write_catalogue(tmp_path / "changes.csv", tmp_path, rows)
    assert main(["index", "update", str(index_dir), "--images", str(tmp_path / "changes.csv"), "--quiet"]) == 0
    assert "replaced 1, added 1" in capsys.readouterr().out
    model = deepmetric.load(run[0])
    with EmbeddingIndex.load(index_dir) as index:
        assert len(index) == N - dropped + 1 and len(set(index.ids)) == len(index)
        moved = index.query(model.embed([str(new)]).numpy(), 5, where="shelf == 'moved'")[0]
        assert [h["id"] for h in moved] == [str(new), str(changed)] and moved[0]["metadata"]["price"] == 778
    assert main(["index", "add", str(index_dir), "--images", str(tmp_path / "changes.csv"), "--quiet"]) == 2
    assert "already indexed" in capsys.readouterr().err
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["committed"] == 4  # build, two deletes, one update: the refused ones committed nothing


def test_serve_a_milvus_index(index_dir):
    from deepmetric.retrieval.serve import make_server

    srv = make_server(index_dir, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with urllib.request.urlopen(url + "/search?id=7&k=3", timeout=30) as r:
            hits = json.loads(r.read())["results"]
        assert len(hits) == 3 and hits[0]["url"] == "/image?id=7" and "metadata" in hits[0]
        with urllib.request.urlopen(url + "/image?id=7", timeout=30) as r:
            assert r.status == 200 and r.read()[:4] == b"\x89PNG"
        with urllib.request.urlopen(url + "/", timeout=30) as r:
            assert f"<b>{N}</b> images, flat index" in r.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
        srv.service.index.close()


@pytest.mark.parametrize("point", ["items", "pointer"])
def test_killed_add_on_milvus_leaves_search_as_before(run, catalogue, index_dir, tmp_path, capsys, point):
    extra = tmp_path / "extra" / "digit_5"
    extra.mkdir(parents=True)
    for i, f in enumerate(sorted((catalogue[0].parent / "digit_5").glob("*.png"))[:4]):
        Image.open(f).transpose(Image.Transpose.TRANSPOSE).save(extra / f"extra{i}.png")
    query = str(extra / "extra0.png")
    before = search_json(capsys, index_dir, query, "-k", "5")[0]["results"]
    close(index_dir)
    kill_at(["index", "add", str(index_dir), "--images", str(tmp_path / "extra"), "--quiet"], point, tmp_path)
    after = search_json(capsys, index_dir, query, "-k", "5")[0]["results"]
    with EmbeddingIndex.load(index_dir) as index:
        if point == "items":  # rows written, not committed: invisible
            assert after == before and len(index) == N and len(index.ids) == N
        else:
            assert after[0]["id"] == query and len(index) == N + 4
    # the next writer cleans up (a kill before the commit leaves rows of generation 2 behind) and commits
    args = ["index", "update", str(index_dir), "--images", str(tmp_path / "extra"), "--quiet"]
    assert main(args) == 0
    with EmbeddingIndex.load(index_dir) as index:
        assert len(index) == N + 4 == len(index.ids) == len(set(index.ids))
        assert index.count("id == " + repr(query)) == 1


def test_bad_uri_missing_pymilvus_and_a_busy_lite_file(run, catalogue, index_dir, tmp_path, capsys, monkeypatch):
    uri = "http://127.0.0.1:9"
    assert main(["index", "build", str(run[0]), "--images", str(catalogue[0]), "--out", str(tmp_path / "x"),
                 "--uri", uri, "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"cannot reach the Milvus server at {uri}" in err and "drop --uri" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "meta.json").exists()
    assert main(["index", "build", str(run[0]), "--images", str(catalogue[0]), "--out", str(tmp_path / "y"),
                 "--backend", "milvus", "--kind", "torch", "--quiet"]) == 2  # fmt: skip
    assert "--kind torch is a local index" in capsys.readouterr().err
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pymilvus", None)
        assert main(["search", str(index_dir), str(next(catalogue[0].parent.glob("digit_1/*.png")))]) == 2
        assert "pip install 'deepmetric[milvus]'" in capsys.readouterr().err
    # this process holds the Lite file open: another process is refused, with the reason
    with EmbeddingIndex.load(index_dir) as index:
        assert len(index.ids) == N
        args = ["index", "delete", str(index_dir), "--ids", "x"]
        code = f"import sys; from deepmetric.cli import main; sys.exit(main({args!r}))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "another process has it open" in proc.stderr, proc.stderr[-2000:]


def test_killed_delete_on_milvus_is_undone_by_the_next_writer(catalogue, index_dir, tmp_path, capsys):
    images = catalogue[0].parent
    marked, other = str(images / "digit_2" / "1.png"), str(images / "digit_2" / "2.png")
    close(index_dir)
    kill_at(["index", "delete", str(index_dir), "--ids", marked], "items", tmp_path)  # rows marked, not committed
    with EmbeddingIndex.load(index_dir) as index:
        assert len(index) == N and marked in index.ids and index.count(f"id == {marked!r}") == 1
    assert main(["index", "delete", str(index_dir), "--ids", other]) == 0  # resets the killed writer's marks
    assert main(["index", "delete", str(index_dir), "--ids", str(images / "digit_2" / "3.png")]) == 0  # + a purge
    with EmbeddingIndex.load(index_dir) as index:
        assert len(index) == N - 2 == len(index.ids) and marked in index.ids and other not in index.ids
        assert search_json(capsys, index_dir, marked, "-k", "1")[0]["results"][0]["id"] == marked


def test_ivf_and_hnsw_after_faiss_torch_utils_is_imported(catalogue, vectors, tmp_path, monkeypatch):
    """pytorch-metric-learning's inference utilities import faiss.contrib.torch_utils, which replaces faiss's search
    with one that drops `params` (Milvus Lite's IVF/HNSW and the local selector search pass it). Last in this module:
    the import patches faiss for the rest of the process."""
    pytest.importorskip("faiss.contrib.torch_utils")
    import deepmetric.retrieval.index as index_module

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    for kind in ("ivf", "hnsw"):
        milvus = MilvusIndex(kind, 16, folder=tmp_path / kind, nprobe=64)
        milvus.add(x, [f"i{i}" for i in range(300)], metadata=[{"odd": i % 2} for i in range(300)])
        milvus.save()
        assert milvus.query(x[:2], 3, where="odd == 1")[1][0]["id"] == "i1"
        milvus.close()
        local = EmbeddingIndex(kind, 16, nlist=4, nprobe=4)
        local.add(x, [f"i{i}" for i in range(300)], metadata=[{"odd": i % 2} for i in range(300)])
        monkeypatch.setattr(index_module, "EXACT_FILTER_MIN", 0)
        monkeypatch.setattr(index_module, "EXACT_FILTER_FRACTION", 0.0)  # the selector path
        assert local.query(x[:2], 3, where="odd == 1")[1][0]["id"] == "i1"

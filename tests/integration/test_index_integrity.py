"""An index that survives (issue #21 item 6): atomic generations under SIGKILL, hashes checked on load, image ids that
follow the index (any cwd, moved folders, --root), k validated, ivf shortfalls reported, batch search with bad
queries, and indexes of the old flat layout."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepmetric
from deepmetric.cli import main
from deepmetric.errors import ConfigError, RunError
from deepmetric.integrity import IntegrityError
from deepmetric.retrieval import EmbeddingIndex
from deepmetric.retrieval.index import PAUSE_ENV, IncompleteResultsWarning, IndexWarning

from ..conftest import write_digit_pngs

PER_CLASS = 12
N = 10 * PER_CLASS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained on sklearn digits PNG folders (classes 0–4)."""
    root = write_digit_pngs(tmp_path_factory.mktemp("train_png"), PER_CLASS)
    out = tmp_path_factory.mktemp("run") / "run"
    deepmetric.train(
        None, output=out, quiet=True, data__name="folder", data__root=str(root), data__classes_per_batch=5,
        data__samples_per_class=8, data__load_size=16, protocol__name="zero_shot",
        protocol__train_classes="[0,1,2,3,4]", augment__train="none", augment__eval="resize_center_crop",
        augment__resize=14, augment__size=12, augment__normalization="gray", model__width=8,
        model__embedding_dim=16, train__epochs=1, report__enabled=False,
    )  # fmt: skip
    return out, root


@pytest.fixture(scope="module")
def project(run, tmp_path_factory):
    """``proj/images`` (the digits by class) and ``proj/index`` (flat), built from inside ``proj`` with relative
    paths, as a user would; tests copy it."""
    out, images = run
    proj = tmp_path_factory.mktemp("proj")
    shutil.copytree(images, proj / "images")
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        assert main(["index", "build", str(out), "--images", "images", "--out", "index", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return proj


@pytest.fixture
def proj(project, tmp_path):
    """A private copy of the project (its index moved with its images)."""
    return Path(shutil.copytree(project, tmp_path / "proj"))


def _query(folder, run_dir, path, k=3, root=None):
    index = EmbeddingIndex.load(folder, root=root)
    return index, index.query(deepmetric.load(run_dir).embed([str(path)]).numpy(), k)[0]


# ------------------------------------------------------------------------------------- atomic generations
def kill_at(args: list[str], point: str, tmp_path) -> None:
    """Run ``deepmetric ARGS`` in a subprocess and SIGKILL it when its writer reaches ``point``."""
    marker = tmp_path / f"paused-{point}"
    env = {**os.environ, PAUSE_ENV: f"{point}:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "deepmetric", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never reached " + point
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["generation", "vectors", "items", "pointer"])
def test_sigkill_during_index_add_leaves_the_old_or_the_new_index(run, proj, tmp_path, point):
    extra = proj / "extra" / "digit_3"
    extra.mkdir(parents=True)
    for i, f in enumerate(sorted((proj / "images" / "digit_3").iterdir())[:5]):  # new images: transposed digits
        Image.open(f).transpose(Image.Transpose.TRANSPOSE).save(extra / f"extra{i}.png")
    kill_at(["index", "add", str(proj / "index"), "--images", str(proj / "extra"), "--quiet"], point, tmp_path)
    expected = N + 5 if point == "pointer" else N  # committed only once meta.json points to the new generation
    query = extra / "extra0.png"
    index, hits = _query(proj / "index", run[0], query)
    assert len(index) == expected and all(Path(h["id"]).is_file() for h in hits)
    assert (hits[0]["id"] == str(query)) == (point == "pointer")
    # the next writer cleans the unfinished generation and commits (update: the extras may be indexed already)
    assert main(["index", "update", str(proj / "index"), "--images", str(proj / "extra"), "--quiet"]) == 0
    assert len(EmbeddingIndex.load(proj / "index")) == N + 5
    assert len(list((proj / "index").glob("gen-*"))) == 2  # the current one and the previous one


def test_sigkill_at_random_moments_of_index_add_leaves_the_old_or_the_new_index(run, proj, tmp_path):
    """Killed at moments drawn uniformly over a whole ``index add`` (timed first), the index is always the old one or
    the new one, and the next writer commits."""
    import random

    extra = proj / "extra" / "digit_3"
    extra.mkdir(parents=True)
    for i, f in enumerate(sorted((proj / "images" / "digit_3").iterdir())[:5]):
        Image.open(f).transpose(Image.Transpose.TRANSPOSE).save(extra / f"extra{i}.png")
    args = [sys.executable, "-m", "deepmetric", "index", "add", str(proj / "index"), "--images", str(proj / "extra"),
            "--quiet"]  # fmt: skip
    spare = Path(shutil.copytree(proj / "index", tmp_path / "spare"))
    start = time.monotonic()
    subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)
    whole = time.monotonic() - start
    seed = int(os.environ.get("DEEPMETRIC_TEST_SEED", random.randrange(2**31)))
    print(f"kill moments drawn with seed {seed} (replay: DEEPMETRIC_TEST_SEED={seed}); a whole add took {whole:.1f} s")
    rng = random.Random(seed)
    for moment in sorted(rng.uniform(0.4 * whole, 0.85 * whole) for _ in range(4)):  # before ~40 %: start-up
        shutil.rmtree(proj / "index")
        shutil.copytree(spare, proj / "index")
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"the add had ended before {moment:.2f} s"  # killed while it ran
        loaded = EmbeddingIndex.load(proj / "index")
        assert len(loaded) in (N, N + 5), f"killed at {moment:.2f} s: {len(loaded)} items"
        assert main(["index", "update", str(proj / "index"), "--images", str(proj / "extra"), "--quiet"]) == 0
        assert len(EmbeddingIndex.load(proj / "index")) == N + 5


@pytest.mark.parametrize(("action", "point"), [("delete", "items"), ("delete", "pointer"), ("update", "vectors"),
                                               ("update", "pointer")])  # fmt: skip
def test_sigkill_during_index_delete_or_update_leaves_the_old_or_the_new_index(run, proj, tmp_path, action, point):
    index = proj / "index"
    changed, new = proj / "images" / "digit_3" / "1.png", proj / "images" / "digit_3" / "new.png"
    Image.open(changed).transpose(Image.Transpose.TRANSPOSE).save(new)
    if action == "delete":
        args = ["index", "delete", str(index), "--ids", str(changed)]
    else:  # a CSV: one indexed image (re-embedded as it is) and a new one
        (proj / "changes.csv").write_text(f"path,label\n{changed},digit_3\n{new},digit_3\n")
        args = ["index", "update", str(index), "--images", str(proj / "changes.csv"), "--quiet"]
    kill_at(args, point, tmp_path)
    done = point == "pointer"
    loaded = EmbeddingIndex.load(index)
    if action == "delete":
        assert len(loaded) == (N - 1 if done else N) and (str(changed) in loaded.ids) != done
        _, hits = _query(index, run[0], changed, k=1)
        assert (hits[0]["id"] == str(changed)) != done
    else:
        assert len(loaded) == (N + 1 if done else N) and (str(new) in loaded.ids) == done
        _, hits = _query(index, run[0], new, k=1)
        assert (hits[0]["id"] == str(new)) == done
    assert main(args) == (2 if action == "delete" and done else 0)  # the next writer (deleting it again: unknown)
    assert len(list(index.glob("gen-*"))) <= 2


def test_generations_are_pruned_and_a_stale_writer_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    index = EmbeddingIndex("torch", 8)
    index.add(rng.standard_normal((5, 8)), [f"item{i}" for i in range(5)])
    for _ in range(3):
        index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").glob("gen-*")) == ["gen-000002", "gen-000003"]
    a, b = EmbeddingIndex.load(tmp_path / "ix"), EmbeddingIndex.load(tmp_path / "ix")
    a.add(rng.standard_normal((1, 8)), ["a"])
    a.save(tmp_path / "ix")
    b.add(rng.standard_normal((1, 8)), ["b"])
    with pytest.raises(RunError, match="changed while this index was loaded"):
        b.save(tmp_path / "ix")
    assert EmbeddingIndex.load(tmp_path / "ix").ids[-1] == "a"


# ------------------------------------------------------------------------------------------------ hashes
@pytest.mark.parametrize("name", ["index.faiss", "items.json"])
def test_garbled_files_raise_integrity_error_naming_the_file(proj, capsys, name):
    (target,) = (proj / "index").glob(f"gen-*/{name}")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, still parseable
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{target}.*does not match"):
        EmbeddingIndex.load(proj / "index")
    assert main(["search", str(proj / "index"), str(proj / "images" / "digit_1" / "1.png")]) == 1
    assert str(target) in capsys.readouterr().err


def test_garbled_torch_vectors_and_pointer(tmp_path):
    index = EmbeddingIndex("torch", 4)
    index.add(np.eye(4), list("abcd"))
    index.save(tmp_path / "ix")
    (vectors,) = (tmp_path / "ix").glob("gen-*/embeddings.npy")
    data = bytearray(vectors.read_bytes())
    data[-3] ^= 0x40
    vectors.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"embeddings\.npy does not match"):
        EmbeddingIndex.load(tmp_path / "ix")
    pointer = tmp_path / "ix" / "meta.json"
    pointer.write_bytes(pointer.read_bytes()[:40])
    with pytest.raises(IntegrityError, match=r"meta\.json cannot be read"):
        EmbeddingIndex.load(tmp_path / "ix")


# ---------------------------------------------------------------------------------------- ids that follow
def test_search_and_serve_from_another_cwd(run, proj, tmp_path, monkeypatch, capsys):
    from deepmetric.retrieval.serve import make_server

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    query = proj / "images" / "digit_4" / "2.png"
    capsys.readouterr()
    assert main(["search", str(proj / "index"), str(query), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert hits[0]["id"] == str(query) and all(Path(h["id"]).is_file() for h in hits)
    srv = make_server(proj / "index", port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with urllib.request.urlopen(url + "/image?id=7", timeout=30) as r:
            assert r.status == 200 and r.read()[:4] == b"\x89PNG"
        with urllib.request.urlopen(url + "/search?id=7&k=2", timeout=30) as r:
            assert len(json.loads(r.read())["results"]) == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_moved_index_and_images_with_and_without_root(run, proj, tmp_path, capsys):
    moved = tmp_path / "moved"
    proj.rename(moved)  # index and images together
    query = moved / "images" / "digit_6" / "3.png"
    _, hits = _query(moved / "index", run[0], query)
    assert hits[0]["id"] == str(query) and all(Path(h["id"]).is_file() for h in hits)
    photos = tmp_path / "photos"
    (moved / "images").rename(photos)  # the images alone
    _, hits = _query(moved / "index", run[0], photos / "digit_6" / "3.png")
    assert not hits[0]["id"].startswith(str(photos))  # where the index recorded them (here: the original build's)
    _, hits = _query(moved / "index", run[0], photos / "digit_6" / "3.png", root=photos)
    assert hits[0]["id"] == str(photos / "digit_6" / "3.png")
    capsys.readouterr()
    assert main(["search", str(moved / "index"), str(photos / "digit_6" / "3.png"), "--root", str(photos),
                 "--json", "-k", "1"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["id"] == str(photos / "digit_6" / "3.png")
    for bad in (tmp_path / "nowhere", tmp_path):  # missing folder; a folder without the images
        assert main(["search", str(moved / "index"), str(photos / "digit_6" / "3.png"), "--root", str(bad)]) == 2
        assert f"--root {bad}" in capsys.readouterr().err
    from deepmetric.retrieval.serve import make_server

    srv = make_server(moved / "index", port=0, root=photos)  # the server re-points the ids too
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.server_address[1]}/search?id=0&k=1", timeout=30) as r:
            assert json.loads(r.read())["results"][0]["id"].startswith(str(photos))
    finally:
        srv.shutdown()
        srv.server_close()
    assert main(["index", "add", str(moved / "index"), "--root", str(photos), "--quiet"]) == 0  # recorded
    assert all(Path(i).is_file() for i in EmbeddingIndex.load(moved / "index").ids)
    assert main(["index", "add", str(moved / "index")]) == 2
    assert "give --images" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- k
def test_k_out_of_range_is_a_clear_error(proj, capsys):
    query = str(proj / "images" / "digit_0" / "1.png")
    for k in (0, N + 1):
        assert main(["search", str(proj / "index"), query, "-k", str(k)]) == 2
        err = capsys.readouterr().err
        assert f"k = {k} is out of range" in err and f"1 ≤ k ≤ {N}" in err and "Traceback" not in err
    assert main(["search", str(proj / "index"), query, "-k", str(N), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["results"]) == N
    with pytest.raises(ConfigError, match="out of range"):
        EmbeddingIndex.load(proj / "index").search(np.ones((1, 16)), 0)


def test_ivf_fewer_than_k_is_reported(run, proj, capsys):
    folder = proj / "ivf"
    assert main(["index", "build", str(run[0]), "--images", str(proj / "images"), "--out", str(folder), "--kind",
                 "ivf", "--nlist", "8", "--nprobe", "1", "--quiet"]) == 0  # fmt: skip
    query = str(proj / "images" / "digit_5" / "4.png")
    capsys.readouterr()
    assert main(["search", str(folder), query, "-k", str(N), "--json"]) == 0
    captured = capsys.readouterr()
    (entry,) = json.loads(captured.out)
    assert entry["complete"] is False and len(entry["results"]) < N and "nprobe" in entry["warning"]
    assert f"of k = {N} hits" in captured.err
    assert main(["search", str(folder), query, "-k", str(N), "--json", "--nprobe", "8"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["complete"] is True
    index = EmbeddingIndex.load(folder)
    with pytest.warns(IncompleteResultsWarning, match="fewer than k"):
        index.query(deepmetric.load(run[0]).embed([query]).numpy(), N)


# ----------------------------------------------------------------------------------------- batch search
def test_batch_search_answers_the_good_queries(proj, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    missing = tmp_path / "missing.png"
    good = [str(proj / "images" / "digit_8" / "1.png"), str(proj / "images" / "digit_9" / "2.png")]
    queries = [good[0], str(corrupt), str(missing), good[1]]
    capsys.readouterr()
    assert main(["search", str(proj / "index"), *queries, "-k", "2", "--json"]) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [e["query"] for e in out] == queries
    assert out[0]["results"][0]["id"] == good[0] and out[3]["results"][0]["id"] == good[1]
    assert "corrupt.png" in out[1]["error"] and "not found" in out[2]["error"] and not out[1]["results"]
    assert "corrupt.png" in captured.err and "missing.png" in captured.err and "2 of 4 queries failed" in captured.err
    assert main(["search", str(proj / "index"), str(corrupt), good[0], "-k", "1"]) == 1
    assert "error: cannot decode" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ old layout
def test_old_flat_layout_is_read_and_converted(run, proj, tmp_path, monkeypatch, capsys):
    folder = proj / "index"
    meta = json.loads((folder / "meta.json").read_text())
    (gen,) = folder.glob("gen-*")
    items = json.loads((gen / "items.json").read_text())
    shutil.copy(gen / "index.faiss", folder / "index.faiss")
    old = {k: meta[k] for k in ("kind", "dim", "count", "params")}
    model = {**meta["model"], "run_dir": meta["model"]["run_dir_absolute"]}
    del model["run_dir_absolute"]
    old.update(model=model, ids=["images/" + i for i in items["ids"]], labels=items["labels"])  # cwd-relative
    (folder / "meta.json").write_text(json.dumps(old))
    shutil.rmtree(gen)
    monkeypatch.chdir(proj)
    with pytest.warns(IndexWarning, match="old layout"):
        index, hits = _query("index", run[0], "images/digit_2/3.png")
    assert hits[0]["id"] == str(proj / "images" / "digit_2" / "3.png")
    monkeypatch.chdir(tmp_path)  # elsewhere: the cwd-relative ids do not resolve, so no conversion
    capsys.readouterr()
    assert main(["index", "add", str(folder), "--images", str(proj / "images" / "digit_2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "old layout" in err and "--root" in err
    assert main(["index", "add", str(folder), "--root", str(proj), "--quiet"]) == 0  # converts
    assert "format" in json.loads((folder / "meta.json").read_text()) and not (folder / "index.faiss").exists()
    index, hits = _query(folder, run[0], proj / "images" / "digit_2" / "3.png")
    assert len(index) == N and hits[0]["id"] == str(proj / "images" / "digit_2" / "3.png")

"""From a trained run to search: load, embed, export, index, search, serve (and a headless-browser session)."""

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import deepmetric
from deepmetric.cli import main
from deepmetric.retrieval import EmbeddingIndex
from deepmetric.retrieval.export import load_exported

from ..conftest import write_digit_pngs


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """sklearn digits as 16 × 16 PNG files in one folder per class (30 per class)."""
    return write_digit_pngs(tmp_path_factory.mktemp("digits_png"), 30, size=16)


@pytest.fixture(scope="module")
def run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    deepmetric.train(
        None, output=out, quiet=True, data__name="folder", data__root=str(images), data__classes_per_batch=5,
        data__samples_per_class=8, data__load_size=16, protocol__name="zero_shot",
        protocol__train_classes="[0,1,2,3,4]", augment__train="none", augment__eval="resize_center_crop",
        augment__resize=14, augment__size=12, augment__normalization="gray", model__width=8,
        model__embedding_dim=16, train__epochs=1, report__enabled=False,
    )  # fmt: skip
    return out


def test_load_and_embed_every_input_kind(run, images):
    model = deepmetric.load(run)
    paths = sorted(str(p) for p in (images / "digit_7").glob("*.png"))[:4]
    from_paths = model.embed(paths)
    assert from_paths.shape == (4, 16) and torch.allclose(from_paths.norm(dim=1), torch.ones(4), atol=1e-5)
    pil = [Image.open(p) for p in paths]
    assert torch.allclose(model.embed(pil), from_paths, atol=1e-6)
    arrays = [np.asarray(p) for p in pil]  # H × W uint8 arrays
    assert torch.allclose(model.embed(arrays), from_paths, atol=1e-6)
    assert torch.allclose(model.embed(paths[0]), from_paths[:1], atol=1e-6)
    batch = torch.stack([model.to_uint8(p) for p in paths])
    assert torch.allclose(model.embed(batch), from_paths, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        model.embed(torch.rand(2, 1, 16, 16))
    with pytest.raises(FileNotFoundError, match="not found"):
        deepmetric.load(run, checkpoint="middle")


def test_exportable_module_equals_the_kornia_eval_path(run):
    model = deepmetric.load(run)
    x = torch.randint(0, 256, (6, model.channels, 16, 16), dtype=torch.uint8)
    assert torch.allclose(model.exportable()(x), model.embed(x), atol=1e-5)


def test_embed_command_with_bad_images_and_labels(run, images, tmp_path, capsys):
    bad = images / "digit_3" / "broken.png"
    bad.write_bytes(b"not a png")
    try:
        assert main(["embed", str(run), "--images", str(images), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 0
    finally:
        bad.unlink()
    assert "broken.png" in capsys.readouterr().err
    emb = np.load(tmp_path / "e.npy")
    side = json.loads((tmp_path / "e.json").read_text())
    assert emb.shape == (300, 16) and len(side["ids"]) == 300 and side["labels"][0] == "digit_0"
    assert [s["path"] for s in side["skipped"]] == [str(bad)]
    with pytest.raises(SystemExit, match="either --images"):
        main(["embed", str(run), "--out", str(tmp_path / "x.npy")])


def test_embed_to_parquet(run, images, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["embed", str(run), "--images", str(images / "digit_2"), "--out", str(tmp_path / "e.parquet"),
                 "--quiet"]) == 0  # fmt: skip
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    assert len(table["id"]) == 30 and len(table["embedding"][0]) == 16 and "label" not in table  # a flat folder


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_with_parity(run, tmp_path, fmt, capsys):
    out = tmp_path / ("model.pt" if fmt == "torchscript" else "model.onnx")
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(out.suffix + ".json").read_text())
    assert meta["max_abs_difference"] <= 1e-4 and meta["preprocessing"]["embedding_dim"] == 16
    model = deepmetric.load(run)
    x = torch.randint(0, 256, (3, model.channels, 16, 16), dtype=torch.uint8)
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    else:
        import onnxruntime

        got = torch.from_numpy(onnxruntime.InferenceSession(str(out)).run(None, {"images": x.numpy()})[0])
    assert (got - model.embed(x)).abs().max() <= 1e-4
    assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / "strict"), "--tolerance", "-1"]) == 1
    assert "differs from the PyTorch model" in capsys.readouterr().err and not (tmp_path / "strict").exists()
    from deepmetric.integrity import sha256_file

    assert meta["sha256"] == sha256_file(out) and meta["external_data"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json"]  # one self-contained file
    assert np.abs(load_exported(out)(x.numpy()) - got.detach().numpy()).max() == 0  # checked, then run


def test_a_garbled_or_mismatched_export_is_refused_on_load(run, tmp_path):
    from deepmetric.integrity import IntegrityError

    first, second = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    stale = tmp_path / "a" / ".model.pt.k1ll3d00.tmp"  # what a killed export leaves
    stale.mkdir(parents=True)
    (stale / "model.pt").write_bytes(b"half")
    for out in (first, second):
        assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert not stale.exists()  # removed by the next export to that file
    raw = bytearray(first.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = b"\xff" * 8
    first.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=rf"{first}.*does not match the SHA-256 in model.pt.json"):
        load_exported(first)
    (tmp_path / "a" / "model.pt.json").replace(tmp_path / "first.json")
    first.write_bytes(second.read_bytes())  # intact again, but the .json beside it is another export's: a mixed pair
    (tmp_path / "b" / "model.pt.json").replace(first.with_suffix(".pt.json"))
    (tmp_path / "first.json").replace(second.with_suffix(".pt.json"))
    with pytest.raises(IntegrityError, match=rf"{second}.*does not match the SHA-256"):
        load_exported(second)  # b's model beside a's metadata
    assert load_exported(first).meta["file"] == "model.pt"  # a's folder now holds b's model and b's metadata
    second.with_suffix(".pt.json").write_text('{"sha256": "x"}')  # no format / preprocessing
    with pytest.raises(IntegrityError, match=r"cannot read the export metadata .*model.pt.json: no 'format'"):
        load_exported(second)
    second.with_suffix(".pt.json").write_text("{not json")  # e.g. cut by a full disk
    with pytest.raises(IntegrityError, match=r"cannot read the export metadata .*model.pt.json"):
        load_exported(second)
    with pytest.raises(FileNotFoundError, match=r"model.pt.json not found|missing\.pt not found"):
        load_exported(tmp_path / "missing.pt")


def test_onnx_too_large_for_one_file_keeps_its_weights_beside_it(run, tmp_path, monkeypatch):
    """Above the single-file limit the weights go to ``model.onnx.data``, named and hashed in the metadata; a new
    small export removes a stale one, and a failed parity check leaves neither file."""
    from deepmetric.integrity import sha256_file
    from deepmetric.retrieval import export as export_module

    out = tmp_path / "model.onnx"
    monkeypatch.setattr(export_module, "ONNX_SINGLE_FILE_LIMIT", 0)
    assert main(["export", str(run), "--out", str(out)]) == 0
    data = tmp_path / "model.onnx.data"
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert data.is_file() and meta["external_data"] == {"file": data.name, "sha256": sha256_file(data)}
    import onnxruntime

    model = deepmetric.load(run)
    x = np.random.default_rng(0).integers(0, 256, (2, model.channels, 16, 16), dtype=np.uint8)
    got = onnxruntime.InferenceSession(str(out)).run(None, {"images": x})[0]
    assert np.abs(got - model.embed(torch.from_numpy(x)).numpy()).max() <= 1e-4
    kept = {p.name: p.read_bytes() for p in (out, data, tmp_path / "model.onnx.json")}
    assert main(["export", str(run), "--out", str(out), "--tolerance", "-1"]) == 1  # the previous export is kept
    assert {p.name: p.read_bytes() for p in (out, data, tmp_path / "model.onnx.json")} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)  # no staging folder left
    assert np.abs(load_exported(out)(x) - got).max() == 0
    monkeypatch.setattr(export_module, "ONNX_SINGLE_FILE_LIMIT", 1.8e9)
    data.write_bytes(b"stale")
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert not data.exists() and json.loads((tmp_path / "model.onnx.json").read_text())["external_data"] is None


@pytest.mark.parametrize("kind", ["flat", "torch", "ivf", "hnsw"])
def test_index_build_search_add(run, images, tmp_path, kind, capsys):
    folder = tmp_path / f"index-{kind}"
    first = tmp_path / "first"
    for d in sorted(images.iterdir())[:6]:
        (first / d.name).mkdir(parents=True)
        for f in d.iterdir():
            (first / d.name / f.name).write_bytes(f.read_bytes())
    extra = ["--nlist", "4", "--nprobe", "4"] if kind == "ivf" else []
    assert main(["index", "build", str(run), "--images", str(first), "--out", str(folder), "--kind", kind, "--quiet",
                 *extra]) == 0  # fmt: skip
    query = str(first / "digit_2" / "5.png")
    capsys.readouterr()
    assert main(["search", str(folder), query, "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["id"] == query
    result = EmbeddingIndex.load(folder).query(deepmetric.load(run).embed([query]).numpy(), 3)[0]
    assert result[0]["id"] == query and result[0]["distance"] < 1e-3 and result[0]["label"] == "digit_2"
    rest = tmp_path / "rest"
    for d in sorted(images.iterdir())[6:]:
        (rest / d.name).mkdir(parents=True)
        for f in d.iterdir():
            (rest / d.name / f.name).write_bytes(f.read_bytes())
    assert main(["index", "add", str(folder), "--images", str(rest), "--quiet"]) == 0
    assert len(EmbeddingIndex.load(folder)) == 300


def test_search_output_and_mismatches(run, images, tmp_path, capsys):
    folder = tmp_path / "index"
    assert main(["index", "build", str(run), "--images", str(images), "--out", str(folder), "--quiet"]) == 0
    capsys.readouterr()
    query = str(images / "digit_4" / "1.png")
    assert main(["search", str(folder), query, "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["query"] == query and out[0]["results"][0]["id"] == query
    assert main(["search", str(folder), query, "-k", "2"]) == 0
    assert "1. 0.0000" in capsys.readouterr().out
    index = EmbeddingIndex.load(folder)
    with pytest.raises(ValueError, match="dimension 16"):
        index.add(np.zeros((2, 8)), ["a", "b"])
    meta = json.loads((folder / "meta.json").read_text())
    meta["model"]["checkpoint_sha256"] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))
    assert main(["search", str(folder), query]) == 2
    assert "build a new index for another model" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="already holds an index"):
        main(["index", "build", str(run), "--images", str(images), "--out", str(folder)])


@pytest.fixture
def server(run, images, tmp_path):
    from deepmetric.retrieval.serve import make_server

    folder = tmp_path / "index"
    assert main(["index", "build", str(run), "--images", str(images), "--out", str(folder), "--quiet"]) == 0
    srv = make_server(folder, port=0, max_upload_mb=0.01)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _post(url, data):
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_answers_and_survives_bad_uploads(server, images):
    with urllib.request.urlopen(server + "/", timeout=30) as r:
        assert r.status == 200 and b"deepmetric search" in r.read()
    png = (images / "digit_1" / "3.png").read_bytes()
    status, body = _post(server + "/search?k=4", png)
    assert status == 200 and len(body["results"]) == 4 and body["results"][0]["distance"] < 1e-3
    status, body = _post(server + "/search", b"this is text, not an image")
    assert status == 400 and "not an image" in body["error"]
    status, body = _post(server + "/search", b"\x89PNG" + bytes(20_000))
    assert status == 413 and "too large" in body["error"]
    status, body = _post(server + "/search?k=2", png)  # still serving
    assert status == 200 and len(body["results"]) == 2
    with urllib.request.urlopen(server + "/search?id=5&k=3", timeout=30) as r:
        assert len(json.loads(r.read())["results"]) == 3
    with urllib.request.urlopen(server + "/image?id=5", timeout=30) as r:
        assert r.read()[:4] == b"\x89PNG"


def test_search_page_in_headless_chromium(server, images, tmp_path):
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed (make test installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]  # fmt: skip
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server + "/")
        page.set_input_files("#file", str(images / "digit_6" / "2.png"))
        page.fill("#k", "6")
        page.click("#search")
        page.wait_for_selector(".hit", timeout=30_000)
        assert page.locator(".hit").count() == 6
        assert "digit_6" in page.locator(".hit").first.inner_text()
        page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
        page.set_input_files("#file", str(not_an_image))
        page.click("#search")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert "not an image" in page.locator("#error").inner_text()
        page.click("#random")
        page.wait_for_selector(".hit", timeout=30_000)
        assert page.locator(".hit").count() == 6
        browser.close()
    assert (tmp_path / "search.png").stat().st_size > 10_000

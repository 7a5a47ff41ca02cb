"""Calibrate → match: `deepmetric calibrate` chooses a run's threshold on its validation split (or labelled images),
stores it with the run (and its exported model), and `load(run).match(images, index)` answers match / no match."""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import deepmetric
from deepmetric.cli import main
from deepmetric.errors import ConfigError
from deepmetric.retrieval import EmbeddingIndex
from deepmetric.retrieval.matching import CALIBRATION_FILE, Match, load_calibration

from ..conftest import write_digit_pngs

TRAIN = dict(
    data__name="folder", data__classes_per_batch=3, data__samples_per_class=8, data__load_size=16,
    protocol__name="zero_shot", protocol__train_classes="[0,1,2,3,4]", augment__train="none", augment__eval="none",
    augment__size=16, augment__normalization="gray", model__width=8, model__embedding_dim=16, train__epochs=2,
    report__enabled=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_digit_pngs(tmp_path_factory.mktemp("digits_png"), 30, size=16)


@pytest.fixture(scope="module")
def run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    deepmetric.train(None, output=out, quiet=True, data__root=str(images), protocol__val_by="classes",
                     protocol__val_classes=2, **TRAIN)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def gallery(run, images, tmp_path_factory):
    """An index of the first 20 images of each unseen digit (5–9); the other 10 of each are the queries."""
    model = deepmetric.load(run)
    paths, labels, queries = [], [], []
    for d in sorted(images.iterdir())[5:]:
        files = sorted(d.iterdir(), key=lambda p: int(p.stem))
        paths += [str(f) for f in files[:20]]
        labels += [d.name] * 20
        queries += [(str(f), d.name) for f in files[20:]]
    index = EmbeddingIndex("flat", model.dim, model=model.source)
    index.add(model.embed(paths).numpy(), paths, labels, paths=True)
    folder = tmp_path_factory.mktemp("gallery") / "index"
    index.save(folder)
    return folder, queries


def test_calibrate_writes_the_threshold_and_match_follows_it(run, gallery, capsys):
    (run / CALIBRATION_FILE).unlink(missing_ok=True)
    assert main(["calibrate", str(run), "--target", "precision=0.8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "for precision=0.8 on the validation split" in out and "written:" in out
    record = json.loads((run / CALIBRATION_FILE).read_text())
    assert record["target"] == "precision=0.8" and record["calibrated_on"] == {"split": "val"}
    assert record["achieved"]["precision"] >= 0.8 and record["checkpoint"] == "best"
    model = deepmetric.load(run)
    assert record["checkpoint_sha256"] == model.source["checkpoint_sha256"]
    folder, queries = gallery
    answers = model.match([q for q, _ in queries], folder)
    assert len(answers) == len(queries) and all(isinstance(a, Match) for a in answers)
    t = record["threshold"]
    for a in answers:
        assert a.matched == (a.distance <= t) and a.threshold == t and 0 <= a.confidence <= 1
    by_distance = sorted(answers, key=lambda a: a.distance)
    assert all(x.confidence >= y.confidence for x, y in itertools.pairwise(by_distance))
    matched = [a for a, (_, label) in zip(answers, queries, strict=True) if a.matched]
    right = [a for a, (_, label) in zip(answers, queries, strict=True) if a.matched and a.label == label]
    # the precision promised on the validation split roughly holds on unseen digits (a weak 2-epoch model)
    assert matched and len(right) / len(matched) >= 0.6
    assert str(answers[0]).startswith(("match: digit_", "no match (nearest "))


def test_thresholds_given_by_hand_and_the_other_targets(run, gallery, capsys):
    folder, queries = gallery
    model = deepmetric.load(run)
    some = [q for q, _ in queries[::10]]
    assert not any(a.matched for a in model.match(some, folder, threshold=0.0))
    everything = model.match(some, folder, threshold=2.0)
    index = EmbeddingIndex.load(folder)
    nearest = index.query(model.embed(some).numpy(), 1)
    assert [a.label for a in everything] == [h[0]["label"] for h in nearest] and all(a.matched for a in everything)
    with pytest.raises(ConfigError, match="threshold 3"):
        model.match(some, folder, threshold=3)
    for target in ("fmr=0.01", "f1"):
        assert main(["calibrate", str(run), "--target", target, "--json", "--quiet"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["target"] == target and 0 < record["threshold"] <= 2
    assert record["achieved"]["f1"] == max(record["achieved"]["f1"], 0)
    assert main(["calibrate", str(run), "--target", "recall=0.9"]) == 2
    assert "give precision=P, fmr=Q or f1" in capsys.readouterr().err


def test_search_answers_match_from_the_calibration_or_a_threshold(run, gallery, capsys):
    folder, queries = gallery
    some = [q for q, _ in queries[::7]]
    assert main(["calibrate", str(run), "--target", "precision=0.8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(folder), *some, "-k", "3", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    expected = deepmetric.load(run).match(some, folder)
    answers = [Match(**e["match"]) for e in entries]
    same = lambda m: (m.matched, m.label, round(m.distance, 6), m.confidence, m.threshold)  # noqa: E731 (ids may tie)
    assert [same(m) for m in answers] == [same(m) for m in expected]  # the same answers as the Python API
    assert main(["search", str(folder), some[0], "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert "  no match (nearest " in out and "> threshold 0.0000, confidence" in out
    assert main(["search", str(folder), some[0], "--threshold", "2", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["match"]["matched"] and entry["match"]["id"] == entry["results"][0]["id"]
    aside = run / "calibration.aside"
    (run / CALIBRATION_FILE).rename(aside)
    try:
        assert main(["search", str(folder), some[0], "--json"]) == 0  # uncalibrated: hits only
        assert "match" not in json.loads(capsys.readouterr().out)[0]
        assert main(["search", str(folder), some[0], "--match"]) == 2
        assert "has no calibration" in capsys.readouterr().err
    finally:
        aside.rename(run / CALIBRATION_FILE)


def test_missing_stale_or_broken_calibrations_are_named(run, gallery, tmp_path, capsys):
    folder, queries = gallery
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / CALIBRATION_FILE).unlink(missing_ok=True)
    model = deepmetric.load(copy)
    index = EmbeddingIndex.load(folder)
    index.model = dict(model.source)  # the copy's weights are the same file
    with pytest.raises(ConfigError, match=r"has no calibration .* run `deepmetric calibrate"):
        model.match([queries[0][0]], index)
    assert main(["calibrate", str(copy), "--checkpoint", "last", "--quiet"]) == 0
    with pytest.raises(ConfigError, match="was made for checkpoint 'last'"):
        load_calibration(copy, model.source["checkpoint_sha256"])
    (copy / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        model.match([queries[0][0]], index)
    (copy / CALIBRATION_FILE).write_text(json.dumps({"format": 1, "threshold": 0.5}))
    with pytest.raises(ConfigError, match="lacks target"):
        model.match([queries[0][0]], index)


def test_calibrate_on_labelled_images_and_a_run_without_validation(run, images, tmp_path, capsys):
    plain = tmp_path / "noval"
    deepmetric.train(None, output=plain, quiet=True, data__root=str(images), protocol__val_by="none",
                     **{**TRAIN, "train__epochs": 1})  # fmt: skip
    capsys.readouterr()
    assert main(["calibrate", str(plain)]) == 2
    assert "no validation split" in capsys.readouterr().err and not (plain / CALIBRATION_FILE).exists()
    held_out = tmp_path / "held_out"
    for d in sorted(images.iterdir())[5:]:
        shutil.copytree(d, held_out / d.name)
    (held_out / "digit_5" / "broken.png").write_bytes(b"not a png")
    assert main(["calibrate", str(plain), "--images", str(held_out), "--target", "f1", "--quiet"]) == 0
    record = json.loads((plain / CALIBRATION_FILE).read_text())
    assert record["calibrated_on"] == {"images": str(held_out), "skipped": 1}
    assert record["num_items"] == 150 and record["num_classes"] == 5
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(images / "digit_1" / "1.png", flat / "a.png")
    assert main(["calibrate", str(plain), "--images", str(flat)]) == 2
    assert "calibration needs labels" in capsys.readouterr().err


def test_export_carries_the_calibration(run, tmp_path):
    assert main(["calibrate", str(run), "--target", "precision=0.8", "--quiet"]) == 0
    out = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    meta = json.loads(out.with_name("model.pt.json").read_text())
    record = json.loads((run / CALIBRATION_FILE).read_text())
    assert meta["calibration"]["threshold"] == record["threshold"]
    assert meta["calibration"]["confidence_curve"] == record["confidence_curve"]
    assert np.isfinite(meta["calibration"]["achieved"]["precision"])


def _serve(folder, **options):
    import threading

    from deepmetric.retrieval.serve import make_server

    srv = make_server(folder, port=0, **options)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def test_serve_answers_match_or_no_match_and_shows_it(run, gallery, tmp_path):
    import urllib.request

    assert main(["calibrate", str(run), "--target", "precision=0.8", "--quiet"]) == 0
    threshold = json.loads((run / CALIBRATION_FILE).read_text())["threshold"]
    folder, queries = gallery
    srv, url = _serve(folder)
    try:
        body = Path(queries[0][0]).read_bytes()
        with urllib.request.urlopen(urllib.request.Request(url + "/search?k=3", data=body, method="POST")) as r:
            answer = json.loads(r.read())
        nearest = answer["results"][0]
        assert answer["match"]["threshold"] == threshold and answer["match"]["id"] == nearest["id"]
        assert answer["match"]["matched"] == (nearest["distance"] <= threshold)
        with urllib.request.urlopen(url + "/") as r:
            assert "calibrated for precision=0.8 on the validation split" in r.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
    srv, url = _serve(folder, threshold=0.0)  # nothing but an exact duplicate matches
    try:
        with urllib.request.urlopen(url + "/search?id=0&k=2") as r:
            assert json.loads(r.read())["match"]["matched"]  # the indexed image itself, at distance 0
        with urllib.request.urlopen(urllib.request.Request(url + "/search", data=body, method="POST")) as r:
            assert not json.loads(r.read())["match"]["matched"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_search_page_shows_the_match_in_headless_chromium(run, gallery):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed (make test installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    assert main(["calibrate", str(run), "--target", "precision=0.8", "--quiet"]) == 0
    srv, url = _serve(gallery[0])
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(url + "/")
            page.click("#random")  # an indexed image: its own nearest neighbour at distance 0, a match
            page.wait_for_selector(".hit", timeout=30_000)
            assert page.locator("#match").inner_text().startswith("match: digit_")
            assert page.locator("#match").get_attribute("class") == "yes"
            assert "calibrated for precision=0.8" in page.locator("#matching").inner_text()
            browser.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_calibration_benchmark_chooses_on_val_and_measures_on_test(run):
    """benchmarks/calibration.py: the threshold `deepmetric calibrate` would write, and its rates on the test split."""
    from benchmarks.calibration import measure, table
    from deepmetric.retrieval.matching import calibrate_run

    out = measure(str(run), ["precision=0.8", "f1"])
    record = calibrate_run(run, "f1", progress=False)
    assert out["f1"]["threshold"] == pytest.approx(record["threshold"])
    assert out["precision=0.8"]["val"]["precision"] >= 0.8
    for found in out.values():
        assert set(found["test"]) >= {"precision", "recall", "accepted", "fmr"}
        assert all(0 <= found["test"][c] <= 1 for c in ("precision", "recall", "accepted", "fmr"))
    lines = table({str(run): out}, ["precision=0.8", "f1"])
    assert len(lines) == 4 and lines[2].startswith("| precision=0.8 | 1 | ")

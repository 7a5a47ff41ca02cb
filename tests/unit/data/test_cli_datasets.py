"""`deepmetric datasets list|info`."""

import json

from deepmetric.cli import main

from .layouts import write_cub


def test_info_prints_json_summary(tmp_path, capsys):
    write_cub(tmp_path, train=(6, 3), test=(4, 2), images=True)
    assert main(["datasets", "info", "cub200", "--root", str(tmp_path), "--decode", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    # five classes, all with ids ≤ 100: CUB's class-based split puts them all in train
    assert out["splits"] == {"train": {"images": 10, "classes": 5}} and out["problems"] == []
    assert out["files_checked"] == 10


def test_info_reports_missing_and_corrupt_files_by_name(tmp_path, capsys):
    write_cub(tmp_path, train=(6, 3), test=(4, 2), images=True)
    images = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))
    images[0].unlink()
    images[1].write_bytes(b"garbage")
    assert main(["datasets", "info", "cub200", "--root", str(tmp_path), "--decode", "--quiet"]) == 1
    captured = capsys.readouterr()
    problems = {p["path"]: p["problem"] for p in json.loads(captured.out)["problems"]}
    assert problems[str(images[0])] == "missing" and "cannot decode" in problems[str(images[1])]
    assert "2 image file(s) missing or corrupt" in captured.err


def test_info_on_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["datasets", "info", "sop", "--root", str(tmp_path), "--quiet"]) == 2
    assert "Ebay_train.txt not found" in capsys.readouterr().err


def test_list_and_options(capsys, tmp_path):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "inshop" in out
    (tmp_path / "index.csv").write_text("path,label,base\na.png,x,1\n")
    assert main(["datasets", "info", "csv", "--root", str(tmp_path), "--option", "coarse_column=base", "--quiet"]) == 1
    assert json.loads(capsys.readouterr().out)["coarse_classes"] == 1

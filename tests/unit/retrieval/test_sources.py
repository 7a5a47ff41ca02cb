"""`list_items`: a CSV's columns besides path and label become typed metadata, aligned with the listed paths."""

import pytest

from deepmetric.retrieval import list_items


def test_csv_columns_are_typed_metadata(tmp_path):
    (tmp_path / "catalogue.csv").write_text(
        "path,label,price,ratio,brand,unit price,id,code\n"
        "a.png,shoe,10,0.5,acme,1,x,007\n"
        "b.png,hat,,2,,2,y,12\n"
        "a.png,shoe,10,0.5,acme,1,x,007\n"  # a duplicate row: dropped, as the CSV loader does
        "c.png,hat,3,1e-3,acme,3,z,x1\n"
    )
    with pytest.warns(UserWarning) as caught:
        paths, labels, metadata = list_items(tmp_path / "catalogue.csv")
    messages = " ".join(str(w.message) for w in caught)
    assert "'unit price', 'id'" in messages and "not stored as metadata" in messages
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.png", "b.png", "c.png"] and labels == ["shoe", "hat", "hat"]
    assert metadata == [
        {"price": 10, "ratio": 0.5, "brand": "acme", "code": "007"},
        {"price": None, "ratio": 2.0, "brand": None, "code": "12"},
        {"price": 3, "ratio": 0.001, "brand": "acme", "code": "x1"},
    ]
    assert type(metadata[0]["price"]) is int and type(metadata[1]["ratio"]) is float


def test_folders_have_no_metadata(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "cats" / "1.png")
    assert list_items(tmp_path) == ([str(tmp_path / "cats" / "1.png")], ["cats"], None)
    (tmp_path / "plain.csv").write_text("path,label\ncats/1.png,cats\n")
    assert list_items(tmp_path / "plain.csv")[2] is None

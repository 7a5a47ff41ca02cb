"""folder and csv loaders (users' own data), image modes and bad images."""

import numpy as np
import pytest
import torch

from deepmetric.data import BadImageError, ImageDataset, collate_batch, load_dataset

from .layouts import tiny_image


@pytest.fixture
def folder_root(tmp_path):
    for c, mode in enumerate(["L", "RGB", "RGBA", "CMYK", "P", "I;16"]):
        for j in range(3):
            ext = "jpg" if mode in ("L", "RGB", "CMYK") else "png"
            tiny_image(tmp_path / f"class_{c}" / f"{j}.{ext}", seed=10 * c + j, mode=mode, size=(9, 7))
    (tmp_path / "class_0" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_labels_and_ignored_files(folder_root):
    t = load_dataset("folder", folder_root)
    assert len(t) == 18 and t.class_names[0] == "class_0"
    assert np.bincount(t.labels).tolist() == [3] * 6
    assert [p.endswith("notes.txt") for p in t.extra["ignored_files"]] == [True]


@pytest.mark.parametrize("channels", [1, 3])
def test_every_image_mode_becomes_the_configured_channels(folder_root, channels):
    ds = ImageDataset(load_dataset("folder", folder_root), channels=channels, load_size=6)
    batch = ds.__getitems__(list(range(len(ds))))
    assert batch["image"].shape == (18, channels, 6, 6) and batch["image"].dtype == torch.uint8
    item = ds[4]
    assert item["image"].shape == (channels, 6, 6) and item["label"] == 1


def test_native_size_and_centre_square(tmp_path):
    tiny_image(tmp_path / "a" / "x.png", 0, size=(20, 10))
    ds = ImageDataset(load_dataset("folder", tmp_path), load_size=None)
    assert ds[0]["image"].shape == (3, 10, 20)
    assert ImageDataset(load_dataset("folder", tmp_path), load_size=4)[0]["image"].shape == (3, 4, 4)


def test_bad_images_fail_with_path_or_are_skipped_and_reported(folder_root):
    bad = folder_root / "class_1" / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg at all")
    table = load_dataset("folder", folder_root)
    pos = table.paths.index(str(bad))
    with pytest.raises(BadImageError, match=r"corrupt\.jpg"):
        ImageDataset(table).__getitems__([0, pos])
    batch = ImageDataset(table, on_bad_image="skip", load_size=5).__getitems__([0, pos, 1])
    assert batch["bad_paths"] == [str(bad)] and batch["image"].shape[0] == 2
    missing = ImageDataset(table, on_bad_image="skip")
    table.paths[0] = str(folder_root / "gone.png")
    assert missing.__getitems__([0])["bad_paths"] == [str(folder_root / "gone.png")]
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageDataset(table, on_bad_image="ignore")


def test_csv_with_strings_splits_flags_and_coarse(tmp_path):
    for i in range(6):
        tiny_image(tmp_path / "imgs" / f"{i}.png", i)
    rows = ["path,label,split,is_query,is_gallery,coarse_label,base"]
    for i, (lab, split, q, g) in enumerate(
        [
            ("cat", "train", 0, 0),
            ("cat", "train", 0, 0),
            ("dog", "test", 1, 0),
            ("dog", "test", 0, 1),
            ("eel", "test", 1, 1),
            ("eel", "test", 0, 1),
        ]
    ):
        rows.append(f"imgs/{i}.png,{lab},{split},{q},{g},{lab[0]},{'xy'[i % 2]}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    t = load_dataset("csv", tmp_path)
    assert t.labels.tolist() == [0, 0, 1, 1, 2, 2] and t.class_names == {0: "cat", 1: "dog", 2: "eel"}
    assert t.is_query.tolist() == [False, False, True, False, True, False]
    assert t.paths[0] == str(tmp_path / "imgs" / "0.png")
    assert t.coarse_names == {0: "c", 1: "d", 2: "e"}
    t2 = load_dataset("csv", tmp_path / "index.csv", coarse_column="base")
    assert t2.coarse_labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_csv_class_names_from_a_column(tmp_path):
    (tmp_path / "index.csv").write_text(
        "path,label,char,class_name\na.png,7,é,e-acute\nb.png,7,é,e-acute\nc.png,3,ß,sz\n"
    )
    assert load_dataset("csv", tmp_path).class_names == {7: "e-acute", 3: "sz"}  # class_name by default
    assert load_dataset("csv", tmp_path, name_column="char").class_names == {7: "é", 3: "ß"}
    (tmp_path / "index.csv").write_text("path,label,char\na.png,7,é\nb.png,7,e\n")
    with pytest.raises(ValueError, match=r"index\.csv:3: column 'char' names class 7 both 'é' and 'e'"):
        load_dataset("csv", tmp_path, name_column="char")
    with pytest.raises(ValueError, match="name column 'glyph' not found"):
        load_dataset("csv", tmp_path, name_column="glyph")


@pytest.mark.parametrize(
    "content,match",
    [
        ("file,label\na.png,1\n", r"missing column\(s\) \['path'\]"),
        ("path,label,split\na.png,1,validation\n", "unknown split value"),
        ("path,label,is_query,is_gallery\na.png,1,maybe,0\n", "must be 0/1"),
        ("path,label,is_query\na.png,1,1\n", "both is_query and is_gallery"),
        ("path,label\n", "no rows"),
        ("path,label\na.png,\nb.png,x\n", "empty values"),
    ],
)
def test_csv_errors(tmp_path, content, match):
    (tmp_path / "index.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_dataset("csv", tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="root=DIR"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset("folder", tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_dataset("folder", tmp_path)


def test_digits_and_in_memory_batches():
    t = load_dataset("digits")
    assert len(t) == 1797 and t.images.shape == (1797, 1, 8, 8) and int(t.images.max()) == 255
    assert t.coarse_labels.tolist()[:10] == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    ds = ImageDataset(t, indices=np.arange(100, 110), channels=3)
    batch = ds.__getitems__([0, 5])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["index"].tolist() == [100, 105]
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])
    assert collate_batch(batch) is batch
    assert collate_batch([ds[0], ds[1]])["label"].tolist() == t.labels[100:102].tolist()

"""The data faults a new user hits, each reproduced: empty class folders, looping and dangling links, CSV duplicates,
labels written several ways, an unreadable image, a load size far from the images' size."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data import BadImageError, ImageDataset, load_dataset
from deepmetric.data.images import native_size, resolve_load_size


def _images(folder, n, size=28):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size), 40 * i, np.uint8)).save(folder / f"{i}.png")


def test_empty_class_folders_keep_labels_contiguous_and_are_listed(tmp_path):
    for name, n in (("apple", 3), ("banana", 0), ("cherry", 2)):
        (tmp_path / name).mkdir()
        _images(tmp_path / name, n)
    with pytest.warns(UserWarning, match=r"1 class folder\(s\) without images left out: \['banana'\]"):
        table = load_dataset("folder", tmp_path)
    assert sorted(set(table.labels.tolist())) == [0, 1] and table.class_names == {0: "apple", 1: "cherry"}
    summary = table.summary()
    assert summary["classes"] == 2 and summary["empty_class_folders"] == ["banana"]
    assert summary["class_names"] == ["apple", "cherry"]


def test_looping_and_dangling_links_are_reported_not_lost(tmp_path):
    _images(tmp_path / "a", 2)
    os.symlink(tmp_path / "a", tmp_path / "a" / "again")  # a loop
    os.symlink(tmp_path / "nowhere.png", tmp_path / "a" / "gone.png")  # dangling
    _images(tmp_path / "b" / "nested", 2)  # images below a class folder count for it
    with pytest.warns(UserWarning) as record:
        table = load_dataset("folder", tmp_path)
    messages = " ".join(str(w.message) for w in record)
    assert "symbolic link loop" in messages and "dangling symbolic link" in messages
    assert len(table) == 4 and len(table.extra["link_problems"]) == 2


def _csv(tmp_path, rows):
    _images(tmp_path / "img", 4)
    path = tmp_path / "index.csv"
    path.write_text("path,label\n" + "".join(f"img/{p}.png,{label}\n" for p, label in rows))
    return path


def test_csv_duplicates_are_dropped_with_a_count(tmp_path):
    path = _csv(tmp_path, [(0, "cat"), (1, "dog"), (0, "cat"), (2, "dog"), (3, "cat")])
    with pytest.warns(UserWarning, match=r"1 duplicate row\(s\) dropped"):
        table = load_dataset("csv", path)
    assert len(table) == 4 and table.extra["duplicates_dropped"] == 1
    assert table.summary()["duplicates_dropped"] == 1


def test_csv_image_under_two_labels_is_an_error_naming_both_rows(tmp_path):
    path = _csv(tmp_path, [(0, "cat"), (1, "dog"), (0, "dog")])
    with pytest.raises(ValueError, match=r"rows 2 and 4 list the same image .*0\.png with labels 'cat' and 'dog'"):
        load_dataset("csv", path)


def test_csv_labels_written_several_ways_are_one_class(tmp_path):
    table = load_dataset("csv", _csv(tmp_path, [(0, "5"), (1, "5.0"), (2, " 5"), (3, "7")]))
    assert table.labels.tolist() == [5, 5, 5, 7] and table.class_names == {5: "5", 7: "7"}
    with pytest.raises(ValueError, match=r"non-integer numbers such as '5\.5'"):
        load_dataset("csv", _csv(tmp_path, [(0, "5.5"), (1, "6")]))


def test_an_unreadable_image_names_the_file_and_the_option(tmp_path):
    _images(tmp_path / "a", 2)
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    dataset = ImageDataset(load_dataset("folder", tmp_path), load_size=28)
    with pytest.raises(BadImageError, match=r"1\.png.*data\.on_bad_image=skip"):
        dataset.__getitems__([0, 1])


def test_load_size_follows_the_images_and_warns_when_far_from_them(tmp_path):
    _images(tmp_path / "a", 3, size=28)
    _images(tmp_path / "b", 3, size=28)
    table = load_dataset("folder", tmp_path)
    assert native_size(table) == 28
    assert resolve_load_size(table, None, needed=224) == 28  # small images: their own size, not 224
    assert resolve_load_size(table, None, needed=16) == 16  # never larger than the augmentation needs
    with pytest.warns(UserWarning, match=r"data\.load_size=256 but the images .* about 28 px"):
        assert resolve_load_size(table, 256, needed=28) == 256
    in_memory = load_dataset("digits")
    assert resolve_load_size(in_memory, None, needed=8) is None and native_size(in_memory) == 8
    assert torch.is_tensor(in_memory.images)

"""CUB200, CARS196, SOP and In-Shop loaders on fixtures generated in the official layouts."""

import numpy as np
import pytest

from deepmetric.data import ImageDataset, load_dataset, make_splits
from deepmetric.data.cars196 import make_of

from .layouts import write_cars, write_cub, write_inshop, write_sop


def test_cub_published_counts(tmp_path):
    t = load_dataset("cub200", write_cub(tmp_path))
    s = t.summary()["splits"]
    assert s["train"] == {"images": 5864, "classes": 100}
    assert s["test"] == {"images": 5924, "classes": 100}
    assert t.labels[t.split == "train"].max() == 99 and t.labels[t.split == "test"].min() == 100
    assert t.class_names[0] == "001.Class_1"
    # root may be the release folder itself too
    assert len(load_dataset("cub200", tmp_path / "CUB_200_2011")) == 11788


def test_cars_published_counts_and_makes(tmp_path):
    t = load_dataset("cars196", write_cars(tmp_path))
    s = t.summary()["splits"]
    assert s["train"] == {"images": 8054, "classes": 98}
    assert s["test"] == {"images": 8131, "classes": 98}
    assert t.paths[0].endswith("car_ims/000001.jpg")
    makes = {t.coarse_names[c] for c in np.unique(t.coarse_labels)}
    assert {"AM General", "Aston Martin", "Land Rover", "Audi", "BMW"} <= makes
    assert make_of("Aston Martin V8 Vantage Convertible 2012") == "Aston Martin"
    assert make_of("Rolls-Royce Ghost Sedan 2012") == "Rolls-Royce"


def test_sop_published_counts(tmp_path):
    t = load_dataset("sop", write_sop(tmp_path))
    s = t.summary()["splits"]
    assert s["train"] == {"images": 59551, "classes": 11318}
    assert s["test"] == {"images": 60502, "classes": 11316}
    assert t.summary()["coarse_classes"] == 12
    assert t.coarse_names[0] == "bicycle"


def test_inshop_published_counts_and_query_gallery(tmp_path):
    t = load_dataset("inshop", write_inshop(tmp_path))
    s = t.summary()
    assert s["splits"]["train"] == {"images": 25882, "classes": 3997}
    assert s["query_images"] == 14218 and s["gallery_images"] == 12612
    test_items = np.unique(t.labels[t.is_query | t.is_gallery])
    assert len(test_items) == 3985
    assert not np.intersect1d(test_items, t.labels[t.split == "train"]).size
    splits = make_splits(t)
    assert len(splits.test_query) == 14218 and len(splits.test_gallery) == 12612
    assert len(splits.test) == 14218 + 12612


@pytest.mark.parametrize(
    "writer,name,counts",
    [
        (write_cub, "cub200", {"train": (12, 3), "test": (9, 3)}),
        (write_cars, "cars196", {"train": (12, 3), "test": (9, 3)}),
        (write_sop, "sop", {"train": (12, 4), "test": (9, 3)}),
        (write_inshop, "inshop", {"train": (12, 4), "query": (6, 3), "gallery": (6, 3)}),
    ],
)
def test_small_fixture_images_decode(tmp_path, writer, name, counts):
    table = load_dataset(name, writer(tmp_path, images=True, **counts))
    ds = ImageDataset(table, load_size=8)
    batch = ds.__getitems__(list(range(len(ds))))
    assert batch["image"].shape == (len(ds), 3, 8, 8)
    assert batch["image"].dtype.is_floating_point is False


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "inshop"])
def test_missing_release_names_the_files(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_dataset(name, tmp_path)


def test_malformed_index_line_is_reported(tmp_path):
    write_cub(tmp_path, train=(4, 2), test=(4, 2))
    f = tmp_path / "CUB_200_2011" / "images.txt"
    f.write_text(f.read_text() + "99\n")
    with pytest.raises(ValueError, match=r"images.txt:9: expected 2 fields"):
        load_dataset("cub200", tmp_path)


def test_unknown_dataset_suggests_names():
    with pytest.raises(ValueError, match=r"did you mean \['cub200'\]"):
        load_dataset("cub2000")
    with pytest.raises(ValueError, match="does not take option"):
        load_dataset("digits", colour=True)

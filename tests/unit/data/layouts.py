"""Generators of the official dataset layouts (CUB-200-2011, CARS196, SOP, In-Shop) for tests.

Index files are written at any size (the published counts by default); image files are written only when
``images=True`` (tiny PNG/JPEG files), since the loaders read the index and only decoding needs the pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def spread(n_items: int, n_classes: int) -> list[int]:
    """Class sizes summing to n_items, as equal as possible."""
    base, extra = divmod(n_items, n_classes)
    return [base + (i < extra) for i in range(n_classes)]


def tiny_image(path: Path, seed: int, mode: str = "RGB", size=(6, 5)) -> None:
    """A small random image saved in ``mode`` (L, RGB, RGBA, CMYK, P, I;16 …)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(array, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)


def write_cub(root: Path, train=(5864, 100), test=(5924, 100), images=False) -> Path:
    base = root / "CUB_200_2011"
    base.mkdir(parents=True)
    sizes = spread(*train) + spread(*test)
    lines_img, lines_cls = [], []
    i = 0
    for c, n in enumerate(sizes, start=1):
        for j in range(n):
            i += 1
            rel = f"{c:03d}.Class_{c}/img_{j}.jpg"
            lines_img.append(f"{i} {rel}")
            lines_cls.append(f"{i} {c}")
            if images:
                tiny_image(base / "images" / rel, i)
    (base / "images.txt").write_text("\n".join(lines_img) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines_cls) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c} {c:03d}.Class_{c}" for c in range(1, len(sizes) + 1)) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(f"{k} {k % 2}" for k in range(1, i + 1)) + "\n")
    return root


CAR_NAMES = ["AM General Hummer SUV 2000", "Aston Martin V8 Vantage Convertible 2012", "Audi R8 Coupe 2012",
             "BMW M3 Coupe 2012", "Land Rover LR2 SUV 2012", "Audi S4 Sedan 2007"]  # fmt: skip


def write_cars(root: Path, train=(8054, 98), test=(8131, 98), images=False) -> Path:
    from scipy.io import savemat

    sizes = spread(*train) + spread(*test)
    n_classes = len(sizes)
    names = [f"{CAR_NAMES[c % len(CAR_NAMES)]} #{c}" for c in range(n_classes)]
    records = []
    k = 0
    for c, n in enumerate(sizes, start=1):
        for _ in range(n):
            k += 1
            rel = f"car_ims/{k:06d}.jpg"
            records.append((rel, 1, 2, 30, 40, c, k % 2))
            if images:
                tiny_image(root / rel, k)
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]  # fmt: skip
    annotations = np.array(records, dtype=dtype).reshape(1, -1)
    class_names = np.array(names, dtype=object).reshape(1, -1)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


def write_sop(root: Path, train=(59551, 11318), test=(60502, 11316), images=False) -> Path:
    base = root / "Stanford_Online_Products"
    base.mkdir(parents=True)
    image_id, class_id = 0, 0
    for part, (n, c) in (("train", train), ("test", test)):
        lines = ["image_id class_id super_class_id path"]
        for size in spread(n, c):
            class_id += 1
            super_id = class_id % 12 + 1
            for j in range(size):
                image_id += 1
                rel = f"cat{super_id}_final/{class_id}_{j}.JPG"
                lines.append(f"{image_id} {class_id} {super_id} {rel}")
                if images:
                    tiny_image(base / rel, image_id)
        (base / f"Ebay_{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_inshop(root: Path, train=(25882, 3997), query=(14218, 3985), gallery=(12612, 3985), images=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    categories = ["WOMEN/Dresses", "MEN/Denim", "WOMEN/Blouses_Shirts"]
    for status, (n, c), offset in (("train", train, 0), ("query", query, 10_000), ("gallery", gallery, 10_000)):
        for item, size in enumerate(spread(n, c)):
            item_id = f"id_{offset + item:08d}"
            for j in range(size):
                rel = f"img/{categories[item % 3]}/{item_id}/{status}_{j:02d}_front.jpg"
                rows.append(f"{rel} {item_id} {status}")
                if images:
                    tiny_image(root / rel, len(rows))
    (root / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    )
    return root

"""The data of the pretrained-regime studies as plain files, for a machine without the fonts or Debian's data packages.

    python -m benchmarks.carry .carry            # .carry/glyphs and .carry/fashion_mnist
    DEEPMETRIC_DATA=$PWD/.carry python -m benchmarks.pretrained --glyphs .carry/glyphs ...

- ``glyphs/``: the project's glyph dataset as ``configs/demo.yaml`` loads it (``deepmetric.data.glyphs``, 80 font
  files, 32 px, characters drawn by at least 20 faces) written in the glyph benchmark's layout
  (``../shared/benchmarks/glyphs``): ``<class>/<font_id>.png``, ``index.csv``, ``splits.json`` (the dataset's own
  class-disjoint split) and ``stats.json``, so ``benchmarks/_glyphs.glyph_csv`` and the ``csv`` dataset read it. The
  glyph loader itself cannot be pointed at its cache alone: the cache key hashes the installed font files' names and
  sizes, so it needs the fonts.
- ``fashion_mnist/``: the four IDX files holding only what the zero-shot protocol reads (the training images of
  classes 0–4 and the test images of classes 5–9), so the same train / validation / test images come out of
  ``make_splits`` (checked when written) at half the size. Only for the zero-shot protocol.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import sys
import unicodedata
from pathlib import Path

import numpy as np

if not __package__:  # run as `python benchmarks/carry.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIELDS = ("path", "label", "codepoint", "char", "script", "base_letter", "font_id", "font_family", "font_style")


def class_folder(cp: int) -> str:
    """The benchmark's class name: ``U+00E9_LATIN_SMALL_LETTER_E_WITH_ACUTE``."""
    return f"U+{cp:04X}_" + unicodedata.name(chr(cp)).replace(" ", "_").replace("-", "_")


def export_glyphs(out: Path, max_fonts: int = 80) -> dict:
    """Write the glyph dataset (``max_fonts`` font files) into ``out``; its counts (also ``out/stats.json``)."""
    from PIL import Image

    from deepmetric.data import glyphs

    table = glyphs.load(max_fonts=max_fonts, progress=False)
    with np.load(table.root, allow_pickle=False) as z:  # the faces of the kept images (the table names them only)
        data = {k: z[k] for k in ("codepoints", "face", "face_family", "face_style")}
    keep = np.isin(data["codepoints"], table.extra["codepoint"])
    faces = data["face"][keep]
    if not np.array_equal(data["codepoints"][keep], table.extra["codepoint"]):
        raise RuntimeError(f"{table.root}: the cached images are not in the table's order")
    out.mkdir(parents=True, exist_ok=True)
    rows, digest = [], hashlib.sha256()
    for i, (cp, face) in enumerate(zip(table.extra["codepoint"].tolist(), faces.tolist(), strict=True)):
        path = f"{class_folder(cp)}/f{face:03d}.png"
        (out / path).parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(table.images[i, 0].numpy()).save(buffer, format="PNG", optimize=True)
        (out / path).write_bytes(buffer.getvalue())
        digest.update(table.images[i, 0].numpy().tobytes())
        rows.append({"path": path, "label": int(table.labels[i]), "codepoint": cp, "char": chr(cp),
                     "script": glyphs.script_of(cp), "base_letter": glyphs.base_letter(cp), "font_id": f"f{face:03d}",
                     "font_family": data["face_family"][face], "font_style": data["face_style"][face]})  # fmt: skip
    with open(out / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    classes = {split: sorted({class_folder(int(cp)) for cp, s in zip(table.extra["codepoint"], table.split,
                                                                      strict=True) if s == split})
               for split in ("train", "test")}  # fmt: skip
    (out / "splits.json").write_text(json.dumps({**classes, "method": "deepmetric.data.glyphs.split_of"}, indent=1))
    stats = {"source": Path(table.root).name, "max_fonts": max_fonts, "images": len(rows),
             "classes": {k: len(v) for k, v in classes.items()}, "content_sha256": digest.hexdigest()}  # fmt: skip
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped reproducibly (no time stamp)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def subset_fashion_mnist(out: Path, train_classes=range(5)) -> dict:
    """Write the zero-shot part of Fashion-MNIST into ``out``: training images of ``train_classes``, test images of
    the others; checked against the full files (the same images train, validate and test)."""
    from deepmetric.data import fashion_mnist
    from deepmetric.data.splits import ProtocolConfig, make_splits

    paths = fashion_mnist.locate(download=False)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in ("train", "test"):
        images = fashion_mnist.read_idx(paths[(part, "images")])
        labels = fashion_mnist.read_idx(paths[(part, "labels")])
        keep = np.isin(labels, list(train_classes)) == (part == "train")
        stem = fashion_mnist.FILES[(part, "images")]
        _write_idx(out / f"{stem}.gz", images[keep])
        _write_idx(out / f"{fashion_mnist.FILES[(part, 'labels')]}.gz", labels[keep])
        counts[part] = int(keep.sum())
    full, subset = fashion_mnist.load(paths[("train", "images")].parent, download=False), fashion_mnist.load(out)
    for val_by, val_classes in (("none", None), ("classes", 2)):
        protocol = ProtocolConfig(name="zero_shot", val_by=val_by, val_classes=val_classes)
        a, b = make_splits(full, protocol, seed=1), make_splits(subset, protocol, seed=1)
        for split in ("train", "val", "test"):
            x, y = getattr(a, split), getattr(b, split)
            if not (np.array_equal(full.labels[x], subset.labels[y]) and (full.images[x] == subset.images[y]).all()):
                raise RuntimeError(f"the Fashion-MNIST subset's {split} split differs from the full data's")
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write glyphs/ and fashion_mnist/ into")
    ap.add_argument("--max-fonts", type=int, default=80, help="glyphs: font files (configs/demo.yaml's 80)")
    args = ap.parse_args(argv)
    print("glyphs:", export_glyphs(args.out / "glyphs", args.max_fonts))
    print("fashion_mnist:", subset_fashion_mnist(args.out / "fashion_mnist"))


if __name__ == "__main__":
    main()

"""The glyph benchmark (``../shared/benchmarks/glyphs/``) as deepmetric configs: its 185 / 185 zero-shot split,
optionally on a fixed subset of the fonts or of the scripts (to keep a benchmark's evaluation within CPU minutes)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

GLYPH_DATA = {"data__name": "csv", "data__channels": 1, "data__load_size": 32, "augment__size": 32,
              "augment__flip": False, "augment__train": "pad_crop", "augment__padding": 2,
              "augment__eval": "none"}  # fmt: skip


def glyph_csv(
    root: str | Path,
    *,
    split: str | None = "classes",
    fonts: int | None = None,
    scripts=None,
    test_scripts=(),
    shared_letters: bool = False,
) -> Path:
    """A CSV over the build in ``root`` (written once, beside its index.csv so relative paths hold).

    ``split``: ``classes`` adds a ``split`` column from splits.json (185 train / 185 test characters), ``images``
    one that tests every 10th image of each character (all characters train), ``scripts`` one that tests the
    characters of ``test_scripts`` and trains on the others (unseen scripts), ``None`` none; ``fonts``: keep the
    images of that many fonts, drawn with ``random.Random(0)`` from the sorted font ids; ``scripts``: keep only
    these scripts (``Latin``, ``Greek``, ``Cyrillic``, ``Digit``); ``shared_letters``: keep only the base letters
    that two or more characters share (``e``: e, é, è, ê, ë, …), the classes made of several modes.
    """
    root = Path(root).expanduser()
    if not (root / "index.csv").is_file():
        raise SystemExit(f"{root}/index.csv not found: build the glyph benchmark (../shared/benchmarks/glyphs)")
    if split not in ("classes", "images", "scripts", None):
        raise ValueError(f"split must be 'classes', 'images', 'scripts' or None, got {split!r}")
    if (split == "scripts") != bool(test_scripts):
        raise ValueError("give test_scripts exactly when split='scripts'")
    first = {"classes": "zero_shot", "images": "image_split", "scripts": "cross_script", None: "all"}[split]
    first += "".join(f"-test_{s.lower()}" for s in sorted(test_scripts))
    parts = [first, *(s.lower() for s in sorted(scripts or ()))]
    parts += ["shared_letters"] if shared_letters else []
    out = root / ("-".join(parts) + (f"-f{fonts}" if fonts else "") + ".csv")
    if out.is_file():
        return out
    with open(root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if fonts:
        ids = sorted({r["font_id"] for r in rows})
        keep = set(random.Random(0).sample(ids, min(fonts, len(ids))))
        rows = [r for r in rows if r["font_id"] in keep]
    if scripts:
        wanted = set(scripts)
        rows = [r for r in rows if r["script"] in wanted]
    if shared_letters:
        characters: dict[str, set] = {}
        for r in rows:
            characters.setdefault(r["base_letter"], set()).add(r["label"])
        rows = [r for r in rows if len(characters[r["base_letter"]]) > 1]
    fields = list(rows[0].keys())
    if split == "classes":
        splits = json.loads((root / "splits.json").read_text())
        split_of = {**dict.fromkeys(splits["train"], "train"), **dict.fromkeys(splits["test"], "test")}
        rows = [{**r, "split": split_of[r["path"].split("/")[0]]} for r in rows]
    elif split == "scripts":
        tested = set(test_scripts)
        rows = [{**r, "split": "test" if r["script"] in tested else "train"} for r in rows]
    elif split == "images":
        seen: dict[str, int] = {}
        for r in rows:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            r["split"] = "test" if seen[r["label"]] % 10 == 0 else "train"
    if split:
        fields.append("split")
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return out


PRETRAIN = {
    **GLYPH_DATA, "protocol__name": "official", "protocol__val_by": "none",
    "data__classes_per_batch": 32, "data__samples_per_class": 4, "train__epochs": 50, "train__max_steps": 800,
    "train__seed": 0, "eval__clustering": False, "report__enabled": False,
}  # fmt: skip


def pretrained_backbone(glyphs: str, folder: Path = Path("runs/glyph_pretrain")) -> Path:
    """Backbone weights trained on the non-Latin characters (a stand-in for ImageNet pretraining before DML on the
    Latin ones), written once to ``folder/backbone.pt``: normalised softmax on every 9 of 10 images of the 129
    Greek, Cyrillic and digit characters, 800 steps of 32 × 4."""
    import torch

    from benchmarks._report import train_once

    out = folder / "backbone.pt"
    if out.is_file():
        return out
    data = glyph_csv(glyphs, split="images", scripts=("Greek", "Cyrillic", "Digit"))
    run_dir = folder / "run"
    train_once(Path("configs/fashion_mnist/normalized_softmax.yaml"), {**PRETRAIN, "data__root": str(data)}, run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["method"]
    prefix = "model.backbone.trunk."
    torch.save({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, out)
    return out

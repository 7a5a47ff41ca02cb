"""configs/own_data.yaml on a real folder dataset: the glyphs written as PNG files, one folder per character.

Builds ``--folder`` (``<character name>/<font>.png``, 32 × 32 grey) from `deepmetric.data.glyphs` with ``--max-fonts``
faces, then trains the own-data preset on it exactly as a user would (``data.name: folder``, the default class-
disjoint protocol: half of the characters held out for test), with the preset's settings except those given with
``--set``, and prints the test metrics beside the baseline (the pretrained model before training).

    python -m benchmarks.own_data [--seeds 0 1 2] [--folder ~/.cache/deepmetric/glyph_folder] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

if not __package__:  # run as `python benchmarks/X.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command_line, emit, overrides_from


def write_folder(folder: Path, max_fonts: int) -> int:
    """The glyphs as ``folder/<class>/<index>.png``; returns the number of images (skips an existing folder)."""
    from PIL import Image

    from deepmetric.data import load_dataset

    if folder.is_dir() and any(folder.iterdir()):
        return sum(1 for _ in folder.rglob("*.png"))
    table = load_dataset("glyphs", max_fonts=max_fonts)
    for i, (label, image) in enumerate(zip(table.labels, table.images, strict=True)):
        name = table.class_names[int(label)]
        safe = f"U{ord(name[0]):04X}_" + unicodedata.name(name[0], "CHAR").replace(" ", "_")
        target = folder / safe
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(target / f"{i:06d}.png")
    return len(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="~/.cache/deepmetric/glyph_folder")
    parser.add_argument("--max-fonts", type=int, default=80)
    parser.add_argument("--runs", default="runs/own-data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (finished runs are reused)")
    parser.add_argument("--seed", type=int, help="one seed (the same as --seeds SEED)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override preset settings")
    parser.add_argument("--write", help="append the result to this markdown file")
    args = parser.parse_args(argv)
    import deepmetric

    seeds = [args.seed] if args.seed is not None else args.seeds
    folder = Path(args.folder).expanduser()
    n = write_folder(folder, args.max_fonts)
    rows, runs = [], []
    for seed in seeds:
        run_dir = Path(args.runs) / f"s{seed}"
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
        else:
            overrides = {"data__root": str(folder), "train__seed": seed, **overrides_from(args.set)}
            _, metrics = deepmetric.train("configs/own_data.yaml", output=run_dir, **overrides)
        runs.append(run_dir)
        tested = [metrics["test"], metrics["baseline"]["test"], metrics["baseline"]["trunk"]["test"]]
        rows.append(f"| {seed} | " + " | ".join(f"{m['map@r']:.3f}" for m in tested)
                    + f" | {metrics['test']['recall@1']:.3f} | {metrics['baseline']['test']['recall@1']:.3f} | "
                    f"{metrics['test']['nmi']:.3f} | {metrics['selected']['step']} |")  # fmt: skip
    splits = metrics["splits"]
    lines = [command_line(), "", f"{n} images in {folder.name}/; train {splits['train']['classes']} / val "
             f"{splits['val']['classes']} / test {splits['test']['classes']} classes (test: {splits['test']['images']} "
             "images)", "",
             "| seed | test map@r, fine-tuned (validation-selected) | model as built | pretrained trunk, pooled | "
             "test recall@1, fine-tuned | model as built | test nmi, fine-tuned | selected step |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|", *rows]  # fmt: skip
    if len(runs) > 1:
        from benchmarks._report import NEUTRAL
        from deepmetric.compare import IGNORED, group_runs, read_run, summarise

        groups = group_runs([read_run(r) for r in runs], ignore=(*IGNORED, *NEUTRAL))
        if len(groups) != 1:
            raise SystemExit(f"the runs differ in more than the seed: {[g.label for g in groups]}; move the old ones")
        for split in ("test", "baseline"):
            stats = summarise(groups, ["map@r", "recall@1", "nmi"], split)[0]["stats"]
            what = "fine-tuned" if split == "test" else "model as built"
            lines.append(f"\n{what}, mean ± std over seeds {seeds}: " + ", ".join(
                f"{m} {stats[m][0]:.3f} ± {stats[m][1]:.3f}" for m in ("map@r", "recall@1", "nmi")))  # fmt: skip
    emit(lines, args.write)


if __name__ == "__main__":
    main()

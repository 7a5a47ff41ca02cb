"""DiVA against its margin baseline at the same total embedding size, its ablation, and test-time head weights.

    python benchmarks/diva.py --protocol fmnist_zero_shot --seeds 0 1 2
    python benchmarks/diva.py --protocol fmnist_zero_shot --ablation --seeds 0
    python benchmarks/diva.py --protocol glyphs_zero_shot --seeds 0 1 2
    python benchmarks/diva.py --protocol glyphs_pretrained --seeds 0 1 2

Presets: ``configs/fashion_mnist/diva.yaml`` (4 × 32-d heads) against ``margin_beta.yaml`` (one 128-d head, margin
loss with learnable per-class β on distance-weighted triplets: DiVA's discriminative task alone, the paper's baseline)
and ``margin_dw.yaml`` (PML's MarginLoss with β fixed at 1.2, a weaker baseline), on the same budget.

- ``fmnist_zero_shot``: Fashion-MNIST classes 0–4 train, 5–9 test; validation = 20 % of the training images.
- ``glyphs_zero_shot``: the glyph benchmark's 185 / 185 character split (``--glyph-fonts`` fonts), trained from scratch;
  validation = one of 4 class-disjoint folds of the training characters (seed s → fold s mod 4).
- ``glyphs_cross_script``: trained from scratch on the Latin characters, tested on the unseen *scripts* (Greek,
  Cyrillic, digits): test classes unlike the training ones, as Fashion-MNIST's shoes and bags are unlike its clothes;
  validation as above (class-disjoint folds of the Latin characters).
- ``glyphs_pretrained``: a stand-in for ImageNet pretraining. The backbone is first trained (normalised softmax) on
  the Greek, Cyrillic and digit characters; DiVA and the baseline then start from it and are trained and tested on
  the Latin characters only (121 train / 120 unseen test, as split by the benchmark), validation as above.

The first row is the network before DML training (random initialisation, or the pretrained backbone with a random
head), the reference both methods should improve on. Each DiVA run is scored three ways on test: with the preset's
test weights, with each head alone, and with head weights chosen on the *validation* split (discriminative weight 1,
every other head in {0, 0.25, 0.5, 1}; best val ``map@r``). ``--ablation`` trains the paper's ablation instead: the
discriminative task alone, plus each auxiliary task (with its decorrelation pair), all tasks, and all tasks without
decorrelation; a disabled task's head gets test weight 0. Each cell is mean ± std over the seeds. Runs are kept in
``--runs`` and reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from deepmetric.config import load_config
from deepmetric.evaluation import retrieval_metrics
from deepmetric.methods.diva import HEADS, DivaMethod
from deepmetric.run import load_run

if not __package__:  # run as `python benchmarks/diva.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._glyphs import GLYPH_DATA, glyph_csv, pretrained_backbone
from benchmarks._report import (
    add_study_arguments,
    command_line,
    emit,
    mean_std,
    overrides_from,
    train_once,
    untrained_overrides,
)

PRESETS = Path("configs/fashion_mnist")
AUX = ("selfsimilarity", "shared", "intra")
AUX_WEIGHTS = (0.0, 0.25, 0.5, 1.0)  # test weights tried for each auxiliary head (the discriminative one has 1)
ALPHA = {"selfsimilarity": "alpha_ssl", "shared": "alpha_shared", "intra": "alpha_intra"}
GLYPHS = {
    **GLYPH_DATA, "protocol__name": "official", "protocol__val_by": "classes", "protocol__n_folds": 4,
    "data__classes_per_batch": 32, "data__samples_per_class": 4, "train__epochs": 50, "train__max_steps": 400,
    "train__eval_every_steps": 200, "method__options__queue_size": 3200,
}  # fmt: skip


def ablation_variants(rho: float) -> dict[str, dict]:
    """The paper's ablation as overrides of the DiVA preset: which tasks train, which heads count at test."""

    def variant(tasks: tuple[str, ...], decorrelate: bool = True) -> dict:
        out = {f"method__options__{ALPHA[h]}": (0.3 if h in tasks else 0.0) for h in AUX}
        pairs = [[h, "discriminative", rho] for h in tasks] if decorrelate else []
        out["method__options__decorrelation"] = json.dumps(pairs)
        weights = {"discriminative": 1.0} | {h: (1.0 if h in tasks else 0.0) for h in AUX}
        out["method__options__test_weights"] = json.dumps(weights)
        return out

    return {
        "discriminative only": variant(()),
        "+ shared": variant(("shared",)),
        "+ intra": variant(("intra",)),
        "+ self-similarity (DaNCE)": variant(("selfsimilarity",)),
        "all four": variant(AUX),
        "all four, no decorrelation": variant(AUX, decorrelate=False),
    }


def combined(method: DivaMethod, heads: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """DiVA's own test-time embedding (``DivaMethod.combine``: normalize(concat(w_h · f_h))) of the per-head
    embeddings ``heads``, with the head weights ``weights`` in place of the run's ``test_weights``."""
    return method.combine(heads, weights)


def val_chosen_weights(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Head weights with the best validation map@r (discriminative 1, others in ``AUX_WEIGHTS``) and the test metrics
    of the embedding they give."""
    run = load_run(run_dir)
    val, test = run.embed("val"), run.embed("test")
    best, best_value = None, -1.0
    for values in itertools.product(AUX_WEIGHTS, repeat=len(AUX)):
        weights = {"discriminative": 1.0, **dict(zip(AUX, values, strict=True))}
        embeddings = combined(run.method, val.heads, weights)
        value = retrieval_metrics(embeddings, val.labels, ks=(1,), metrics=("map@r",))["map@r"]
        if value > best_value:
            best, best_value = weights, value
    return best, run.score("test", test.with_embeddings(combined(run.method, test.heads, best)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--protocol",
        choices=("fmnist_zero_shot", "glyphs_zero_shot", "glyphs_cross_script", "glyphs_pretrained"),
        required=True,
    )
    ap.add_argument("--ablation", action="store_true", help="train the task / decorrelation ablation instead")
    ap.add_argument(
        "--variant",
        help="name for DiVA runs made with --set method.options...: they get their own "
        "run folders while the baseline runs (which ignore method options) are shared; a shared run made "
        "with other settings is refused, never reused",
    )
    ap.add_argument(
        "--no-fixed-beta", action="store_true", help="skip the fixed-β margin baseline (saves a run per seed)"
    )
    ap.add_argument("--head-dim", type=int, default=32, help="DiVA's size per head; the baselines get 4 × this")
    add_study_arguments(ap, runs="runs/diva")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    base = {"report__enabled": False}
    tag = args.protocol
    if args.protocol != "fmnist_zero_shot":
        scripts = ("Latin",) if args.protocol == "glyphs_pretrained" else None
        split = {"glyphs_cross_script": "scripts"}.get(args.protocol, "classes")
        test_scripts = ("Greek", "Cyrillic", "Digit") if split == "scripts" else ()
        data = glyph_csv(
            args.glyphs, fonts=args.glyph_fonts or None, scripts=scripts, split=split, test_scripts=test_scripts
        )
        base.update(GLYPHS, data__root=str(data))
        tag = f"{args.protocol}-f{args.glyph_fonts}"
    if args.protocol == "glyphs_pretrained":
        base["model__weights"] = str(pretrained_backbone(args.glyphs))
    if args.head_dim < 1:
        raise SystemExit(f"--head-dim must be ≥ 1, got {args.head_dim}")
    if args.head_dim != 32:  # every run's size changes, the baselines' too: their own folders
        base["model__embedding_dim"] = args.head_dim
        tag += f"-d{args.head_dim}"
    base.update(overrides_from(args.set))
    variant = f"-{args.variant}" if args.variant else ""

    def run(preset: str, seed: int, extra: dict, name: str, untrained: bool = False) -> tuple[dict, Path]:
        overrides = {**base, **extra, "train__seed": seed}
        overrides = untrained_overrides(overrides) if untrained else overrides
        if args.protocol != "fmnist_zero_shot":
            overrides["protocol__fold"] = seed % 4
        if preset != "diva":
            overrides = {k: v for k, v in overrides.items() if not k.startswith("method__")}
            overrides["model__embedding_dim"] = 4 * args.head_dim
        run_dir = runs / tag / f"{name}-seed{seed}"
        return train_once(PRESETS / f"{preset}.yaml", overrides, run_dir)["test"], run_dir

    def row(label: str, tests: list[dict], prefix: str = "", nmi: bool = True) -> str:
        cells = [mean_std([t[prefix + m] for t in tests]) for m in ("recall@1", "map@r")]
        cells.append(mean_std([t["nmi"] for t in tests]) if nmi and "nmi" in tests[0] else "–")
        return f"| {label} | " + " | ".join(cells) + " |"

    head = "| model | recall@1 | map@r | nmi |"
    lines = [command_line(), "", f"{tag}{variant}, seeds {args.seeds}, test split", ""]
    if args.ablation:
        rows = []
        rho = base.get("method__options__rho", load_config(PRESETS / "diva.yaml").method.options["rho"])
        for label, extra in ablation_variants(float(rho)).items():
            tests = [
                run("diva", seed, extra, f"ablation{variant}-" + label.replace(" ", "_"))[0] for seed in args.seeds
            ]
            rows.append(row(label, tests))
            print(rows[-1], flush=True)
        emit([*lines, head, "|---|---:|---:|---:|", *rows], args.write)
        return
    initial = [run("margin_dw", seed, {}, "untrained", untrained=True)[0] for seed in args.seeds]
    margin = [run("margin_beta", seed, {}, "margin_beta")[0] for seed in args.seeds]
    margin_fixed = [] if args.no_fixed_beta else [run("margin_dw", seed, {}, "margin")[0] for seed in args.seeds]
    diva, chosen, chosen_weights = [], [], []
    for seed in args.seeds:
        test, run_dir = run("diva", seed, {}, f"diva{variant}")
        weights, metrics = val_chosen_weights(run_dir)
        diva.append(test)
        chosen.append(metrics)
        chosen_weights.append(weights)

    total = 4 * args.head_dim
    start = "pretrained backbone" if args.protocol == "glyphs_pretrained" else "untrained network"
    rows = [
        row(f"{start}, no DML training ({total}-d)", initial),
        row(f"margin baseline, learnable β ({total}-d)", margin),
        *([row(f"margin, β fixed at 1.2 (PML MarginLoss, {total}-d)", margin_fixed)] if margin_fixed else []),
        row(f"DiVA, preset test weights (4 × {args.head_dim}-d)", diva),
        row("DiVA, head weights chosen on validation", chosen),
    ]
    rows += [row(f"DiVA head `{h}` alone ({args.head_dim}-d)", diva, prefix=f"{h}/", nmi=False) for h in HEADS]
    picked = ", ".join("(" + ", ".join(f"{w[h]:g}" for h in HEADS) + ")" for w in chosen_weights)
    emit([*lines, head, "|---|---:|---:|---:|", *rows, "",
          f"Weights chosen on validation per seed ({', '.join(HEADS)}): {picked}."], args.write)  # fmt: skip


if __name__ == "__main__":
    main()

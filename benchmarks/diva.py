"""DiVA against its margin baseline at the same total embedding size, its ablation, and test-time head weights.

    python benchmarks/diva.py --protocol fmnist_zero_shot --seeds 0 1 2
    python benchmarks/diva.py --protocol fmnist_zero_shot --ablation --seeds 0
    python benchmarks/diva.py --protocol glyphs_zero_shot --seeds 0 1 2
    python benchmarks/diva.py --protocol glyphs_pretrained --seeds 0 1 2
    python -m benchmarks.diva --regime pretrained --protocol glyphs_zero_shot --glyphs .carry/glyphs --glyph-fonts 0

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
``--runs`` and reused; ``--jobs N`` trains N at once.

``--regime pretrained`` (benchmarks/_regime.py; ``glyphs_zero_shot`` and ``fmnist_zero_shot``): every run from the
ImageNet-pretrained Lite0, 450 steps of 32 × 4 (3 × 42 on Fashion-MNIST), validation every 150 steps on held-out
training classes; the head weights are chosen on that validation split too. The first rows are then the pretrained
trunk's pooled features and the model as built (trunk + fresh 128-d head), measured before step 1 of the
learnable-β runs, in place of an untrained run.
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
from benchmarks._regime import REFERENCE, check_protocol, pretrained
from benchmarks._report import add_study_arguments, mean_std, overrides_from, untrained_overrides
from benchmarks._runs import Cell, Run, run_study, summary

PRESETS = Path("configs/fashion_mnist")
PRETRAINED = ("glyphs_zero_shot", "fmnist_zero_shot")
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


def stored_choice(run_dir: Path) -> tuple[dict[str, float], dict[str, float]] | None:
    """The run's ``val_chosen.json`` (written by `val_chosen`), None when absent or made with other weights."""
    path = Path(run_dir) / "val_chosen.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    return (stored["weights"], stored["test"]) if stored.get("aux_weights") == list(AUX_WEIGHTS) else None


def val_chosen(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """`val_chosen_weights`, kept in the run's ``val_chosen.json``: computed once, with the trained model, right after
    training (a `Run`'s ``then``), so a table needs no checkpoint."""
    if (choice := stored_choice(run_dir)) is not None:
        return choice
    weights, test = val_chosen_weights(run_dir)
    tmp = Path(run_dir) / "val_chosen.json.tmp"
    tmp.write_text(json.dumps({"aux_weights": list(AUX_WEIGHTS), "weights": weights, "test": test}, indent=1) + "\n")
    tmp.replace(Path(run_dir) / "val_chosen.json")
    return weights, test


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


def parser() -> argparse.ArgumentParser:
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
    return ap


def setup(args) -> tuple[dict, str]:
    """The overrides every run of the study shares, and its tag (the runs' subfolder)."""
    check_protocol(args.regime, args.protocol, PRETRAINED)
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
    if args.regime == "pretrained":
        base.update(pretrained("fmnist" if args.protocol == "fmnist_zero_shot" else "glyphs", 450, 150))
        tag += "-pretrained"
    if args.head_dim < 1:
        raise SystemExit(f"--head-dim must be ≥ 1, got {args.head_dim}")
    if args.head_dim != 32:  # every run's size changes, the baselines' too: their own folders
        base["model__embedding_dim"] = args.head_dim
        tag += f"-d{args.head_dim}"
    base.update(overrides_from(args.set))
    return base, tag


def cells(args) -> list[Cell]:
    """The ablation's variants, or: the untrained network (preset regime), the learnable-β and fixed-β margin
    baselines and DiVA (whose runs then choose their head weights on validation), over the seeds."""
    base, tag = setup(args)
    variant = f"-{args.variant}" if args.variant else ""

    def run(preset: str, seed: int, extra: dict, name: str, untrained: bool = False) -> Run:
        overrides = {**base, **extra, "train__seed": seed}
        overrides = untrained_overrides(overrides) if untrained else overrides
        if args.protocol != "fmnist_zero_shot" and args.regime == "preset":
            overrides["protocol__fold"] = seed % 4
        if preset != "diva":
            overrides = {k: v for k, v in overrides.items() if not k.startswith("method__")}
            overrides["model__embedding_dim"] = 4 * args.head_dim
        then = val_chosen if preset == "diva" and not args.ablation else None
        return Run(PRESETS / f"{preset}.yaml", overrides, Path(args.runs) / tag / f"{name}-seed{seed}", then)

    def cell(label: str, preset: str, name: str, extra: dict | None = None, untrained: bool = False) -> Cell:
        return Cell((label,), [run(preset, seed, extra or {}, name, untrained) for seed in args.seeds])

    if args.ablation:
        rho = base.get("method__options__rho", load_config(PRESETS / "diva.yaml").method.options["rho"])
        return [cell(label, "diva", f"ablation{variant}-" + label.replace(" ", "_"), extra)
                for label, extra in ablation_variants(float(rho)).items()]  # fmt: skip
    out = [cell("untrained", "margin_dw", "untrained", untrained=True)] if args.regime == "preset" else []
    out.append(cell("margin_beta", "margin_beta", "margin_beta", REFERENCE if args.regime == "pretrained" else None))
    out += [] if args.no_fixed_beta else [cell("margin_fixed", "margin_dw", "margin")]
    return [*out, cell("diva", "diva", f"diva{variant}")]


def _row(label: str, runs: list[Run], prefix: str = "", nmi: bool = True) -> str:
    cells = summary(runs, [prefix + "recall@1", prefix + "map@r", *(["nmi"] if nmi else [])])
    return f"| {label} | " + " | ".join(cells if nmi else [*cells, "–"]) + " |"


def _stats_row(label: str, tests: list[dict], seeds: int) -> str:
    """A row of test metrics that are no metrics.json keys, over the ``tests`` at hand of ``seeds``."""
    if not tests:
        return f"| {label} | – | – | – |"
    more = f" (n={len(tests)})" if len(tests) < seeds else ""
    cells = [mean_std([t[m] for t in tests]) + more if m in tests[0] else "–" for m in ("recall@1", "map@r", "nmi")]
    return f"| {label} | " + " | ".join(cells) + " |"


def table(args, cells: list[Cell], command: str) -> list[str]:
    _, tag = setup(args)
    variant = f"-{args.variant}" if args.variant else ""
    head = ["| model | recall@1 | map@r | nmi |", "|---|---:|---:|---:|"]
    lines = [command, "", f"{tag}{variant}, seeds {args.seeds}, test split", ""]
    if args.ablation:
        return [*lines, *head, *(_row(c.label[0], c.runs) for c in cells)]
    by = {c.label[0]: c for c in cells}
    total = 4 * args.head_dim
    rows = []
    if args.regime == "pretrained":
        learnt = [m for m in by["margin_beta"].finished() if "baseline" in m]
        trunk = [m["baseline"]["trunk"]["test"] for m in learnt]
        rows.append(_stats_row("pretrained trunk, pooled 1,280-d (no DML training)", trunk, len(args.seeds)))
        built = [m["baseline"]["test"] for m in learnt]
        rows.append(_stats_row(f"model as built (trunk + fresh {total}-d head)", built, len(args.seeds)))
    else:
        start = "pretrained backbone" if args.protocol == "glyphs_pretrained" else "untrained network"
        rows.append(_row(f"{start}, no DML training ({total}-d)", by["untrained"].runs))
    rows.append(_row(f"margin baseline, learnable β ({total}-d)", by["margin_beta"].runs))
    if "margin_fixed" in by:
        rows.append(_row(f"margin, β fixed at 1.2 (PML MarginLoss, {total}-d)", by["margin_fixed"].runs))
    chosen = [c for r in by["diva"].runs if r.metrics() is not None and (c := stored_choice(r.run_dir))]
    rows.append(_row(f"DiVA, preset test weights (4 × {args.head_dim}-d)", by["diva"].runs))
    rows.append(_stats_row("DiVA, head weights chosen on validation", [t for _, t in chosen], len(args.seeds)))
    rows += [_row(f"DiVA head `{h}` alone ({args.head_dim}-d)", by["diva"].runs, prefix=f"{h}/", nmi=False)
             for h in HEADS]  # fmt: skip
    picked = ", ".join("(" + ", ".join(f"{w[h]:g}" for h in HEADS) + ")" for w, _ in chosen)
    return [*lines, *head, *rows, "", f"Weights chosen on validation per seed ({', '.join(HEADS)}): {picked}."]


def main(argv=None):
    run_study(parser(), cells, table, argv)


if __name__ == "__main__":
    main()

"""Methods that compose (docs/combining.md): what a cross-batch memory (XBM), EPS inside DiVA and EPS inside CCP
change, each against its twin without it, and what the memory costs per step.

    python -m benchmarks.compose --step-time [--steps 20 --repeats 3] [--set train.device=cuda]
    python -m benchmarks.compose --protocol fmnist_zero_shot --seeds 0 1 2 [--set train.device=cuda]
    python -m benchmarks.compose --protocol glyphs_zero_shot --glyphs ~/.cache/deepmetric/glyphs --glyph-fonts 0

Quality: every run from the ImageNet-pretrained EfficientNet-Lite0 (benchmarks/_regime.py: the demo's recipe,
batches of 128, ``--steps`` steps, the checkpoint chosen on held-out training classes, never on test), on
Fashion-MNIST zero-shot (classes 0–4 train, 5–9 test) or the glyph benchmark's 185 / 185 character split; the
presets of configs/fashion_mnist/ in twins: ``contrastive`` / ``xbm_contrastive`` and ``multi_similarity`` /
``xbm_multi_similarity`` (XBM's headline pair: memory 4,096 after 100 warm-up steps), ``diva`` / ``diva_eps``,
``ccp_c2`` / ``ccp_eps``. Each cell is test mean ± std over the seeds. Runs are kept in ``--runs`` and reused
(an interrupted study continues), so a finished run is only retrained after it is deleted.

``--step-time``: the standard method's training step (forward, loss, backward, optimiser step, ``on_step_end``) on
the regime's network (EfficientNet-Lite0, 64 px, last 11 blocks, frozen BatchNorm, 128-d), batch 32 × 4, without a
memory and with a full XBM queue of 4,096 × 128 (the memory term on from the first step), for PML's contrastive
loss (every pair), multi-similarity with its miner, and deepmetric's C2 (masks, no index tuples). The variants
take turns step by step in this process, ``--repeats`` rounds of ``--steps``, and the median of the paired per-step
ratios is reported (goal: XBM ≤ 1.15 × no memory); then the loss alone, to show what the memory itself adds.
``--set`` overrides apply here too (``train.device=cuda``, ``model.backbone=...``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/compose.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._glyphs import GLYPH_DATA, glyph_csv
from benchmarks._report import NEUTRAL, command_line, emit, overrides_from, train_once
from deepmetric.compare import IGNORED, group_runs, read_run, summarise

PRESETS = Path("configs/fashion_mnist")
# (study row, twin without, twin with): the same overrides for both, so the row measures the composition alone
TWINS = {
    "xbm_contrastive": ("contrastive", "no memory", "contrastive", "XBM 4,096", "xbm_contrastive"),
    "xbm_multi_similarity": ("multi-similarity", "no memory", "multi_similarity", "XBM 4,096", "xbm_multi_similarity"),
    "diva_eps": ("DiVA", "distance-weighted", "diva", "EPS", "diva_eps"),
    "ccp_eps": ("CCP (C2)", "every pair", "ccp_c2", "EPS", "ccp_eps"),
}
PROTOCOLS = ("fmnist_zero_shot", "glyphs_zero_shot")
METRICS = ("map@r", "precision@1", "recall@1")
STEP_LOSSES = {  # name: (preset, overrides)
    "contrastive (PML, every pair)": ("contrastive", {}),
    "multi-similarity + miner (PML)": ("multi_similarity", {}),
    "C2 (deepmetric, every pair)": ("contrastive", {"loss__name": "ccp_c2", "loss__params": "{}"}),
}
TRUNK = {  # benchmarks/_regime.py's network, built without its download (the weights do not change a step's time)
    "model__backbone": "efficientnet_lite0", "model__pretrained": False, "model__trainable_blocks": 11,
    "model__freeze_bn": True, "model__channels_last": True, "model__pooling": "avg", "model__embedding_dim": 128,
    "augment__size": 64, "optim__name": "adamw", "optim__lr": 3e-4, "optim__weight_decay": 1e-4,
    "optim__head_lr_mult": 3.3, "data__classes_per_batch": 32, "data__samples_per_class": 4,
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-time", action="store_true", help="the step-time ratio of XBM against no memory")
    ap.add_argument("--protocol", choices=PROTOCOLS, help="the quality study's data")
    ap.add_argument("--twins", nargs="+", choices=sorted(TWINS), default=list(TWINS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="training steps (quality: 400) or timed steps (20)")
    ap.add_argument("--repeats", type=int, default=3, help="step time: rounds of --steps steps")
    ap.add_argument("--queue", type=int, default=4096, help="step time: the memory's size")
    ap.add_argument("--classes", type=int, default=100, help="step time: training classes (the queue's labels)")
    ap.add_argument("--glyphs", default="~/.cache/deepmetric/glyphs", help="root of a glyph benchmark build")
    ap.add_argument("--glyph-fonts", type=int, default=160, help="glyphs: images of this many fonts (0: all 686)")
    ap.add_argument("--runs", default="runs/compose", help="run folder (finished runs are reused)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--write", help="append the result to this markdown file")
    return ap


# ------------------------------------------------------------------------------------------------ step time
def _method(preset: str, overrides: dict, memory: int, num_classes: int):
    import torch

    from deepmetric.config import load_config, parse_overrides
    from deepmetric.run import build_method, resolve_device
    from deepmetric.training.optim import build_optimizer

    extra = {"memory__size": memory, "memory__warmup_steps": 0} if memory else {}
    cfg = load_config(PRESETS / f"{preset}.yaml", parse_overrides({**TRUNK, **overrides, **extra}))
    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    method = build_method(cfg, in_channels=1, num_classes=num_classes, load_pretrained=False).to(device)
    if memory:  # a full queue of unit vectors over the training classes, as after its first pass
        g = torch.Generator().manual_seed(1)
        state = method.memory.state_dict()
        state["embeddings"] = torch.nn.functional.normalize(torch.randn(memory, cfg.model.embedding_dim, generator=g))
        state["labels"] = torch.randint(0, num_classes, (memory,), generator=g)
        state["filled"] = torch.tensor(memory)
        method.memory.load_state_dict({k: v.to(device) for k, v in state.items()})
    groups = method.param_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.head_lr_mult)
    return (method, build_optimizer(cfg.optim, groups)), cfg, device


def _interleaved(variants: dict, steps: int, repeats: int, device) -> tuple[dict[str, float], float]:
    """Each variant's median seconds per call of ``variant(i)``, and the median over calls of the paired ratio
    (second variant / first). The variants take turns call by call (in alternating order), so a burst of load from
    other processes on the machine hits both alike; the first 2 calls of each of the ``repeats`` rounds are left out.
    A GPU is synchronised before each clock read."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(variants)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for i in range(steps):
            for name in names if i % 2 == 0 else names[::-1]:
                sync()
                t0 = time.perf_counter()
                variants[name](i)
                sync()
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
    ratio = statistics.median(b / a for a, b in zip(times[names[0]], times[names[1]], strict=True))
    return {name: statistics.median(v) for name, v in times.items()}, ratio


def _step(method, opt, batches):
    """A training step as the trainer takes it: forward, loss, backward, optimiser step, ``on_step_end``."""

    def run(i):
        method.train()
        out = method.training_step(batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_step_end(i + 1)

    return run


def _loss_alone(method, batches, device):
    """The method's loss alone (``pair_loss`` forward and backward, and the enqueue) on the batches' labels and
    random unit embeddings: what the memory adds, whatever the network."""
    import torch

    from deepmetric.losses import pair_loss

    g = torch.Generator().manual_seed(2)
    dim = method.model.dims["embedding"]

    def run(i):
        labels = batches[i % len(batches)]["label"]
        x = torch.nn.functional.normalize(torch.randn(len(labels), dim, generator=g), dim=1).to(device)
        loss, _ = pair_loss(method.loss, method.miner, x.requires_grad_(), labels, method.memory)
        loss.backward()
        if method.memory is not None:
            method.memory.step_end(i + 1)

    return run


def step_time(args) -> list[str]:
    import torch

    overrides = overrides_from(args.set)
    steps = args.steps or 20
    rows, loss_rows = [], []
    for loss, (preset, extra) in STEP_LOSSES.items():
        base, cfg, device = _method(preset, {**extra, **overrides}, 0, args.classes)
        xbm, _, _ = _method(preset, {**extra, **overrides}, args.queue, args.classes)
        g = torch.Generator().manual_seed(0)
        n = cfg.data.classes_per_batch * cfg.data.samples_per_class
        size = cfg.augment.size
        batches = []
        for _ in range(4):
            classes = torch.randperm(args.classes, generator=g)[: cfg.data.classes_per_batch]
            labels = classes.repeat_interleave(cfg.data.samples_per_class)
            images = torch.randn(n, 1, size, size, generator=g)
            batches.append({"views": [images.to(device)], "label": labels.to(device)})
        variants = {"none": _step(*base, batches), "xbm": _step(*xbm, batches)}
        times, ratio = _interleaved(variants, steps, args.repeats, device)
        rows.append(f"| {loss} | {times['none']:.3f} | {times['xbm']:.3f} | {ratio:.3f} |")
        variants = {"none": _loss_alone(base[0], batches, device), "xbm": _loss_alone(xbm[0], batches, device)}
        alone, _ = _interleaved(variants, steps, args.repeats, device)
        extra = 1000 * (alone["xbm"] - alone["none"])
        loss_rows.append(f"| {loss} | {1000 * alone['none']:.1f} | {1000 * alone['xbm']:.1f} | {extra:.1f} |")
    where = f"{device.type}" + ("" if device.type == "cuda" else f", {torch.get_num_threads()} torch threads")
    return [
        command_line(), "",
        f"{cfg.model.backbone} ({cfg.model.trainable_blocks} blocks trained, frozen BatchNorm) at {size} px, batch "
        f"{cfg.data.classes_per_batch} × {cfg.data.samples_per_class} = {n}, {cfg.model.embedding_dim}-d, "
        f"{cfg.optim.name}, queue {args.queue} × {cfg.model.embedding_dim} over {args.classes} classes; {where}; "
        f"{args.repeats} rounds of {steps} steps per variant, taking turns step by step (first 2 of each round left "
        "out); medians, and the median of the paired per-step ratios", "",
        "| loss | no memory, s / step | XBM, s / step | XBM / no memory |", "|---|---:|---:|---:|", *rows, "",
        f"The loss alone (forward, backward and the enqueue, on {n} random unit embeddings with the batches' labels; "
        "what XBM adds whatever the network):", "",
        "| loss | no memory, ms | XBM, ms | added, ms |", "|---|---:|---:|---:|", *loss_rows,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------- quality
def setup(args) -> tuple[dict, str]:
    """The overrides every run shares, and the runs' subfolder."""
    from benchmarks._regime import pretrained  # the study regime shared with eps / diva / ccp

    steps = args.steps or 400
    if args.protocol == "fmnist_zero_shot":
        base = pretrained("fmnist", steps, 40)  # its validation is 12,000 images: every 40 steps
        tag = args.protocol
    else:
        data = glyph_csv(args.glyphs, fonts=args.glyph_fonts or None)
        base = {**GLYPH_DATA, "protocol__name": "official", "data__root": str(data), **pretrained("glyphs", steps, 20)}
        tag = f"{args.protocol}-f{args.glyph_fonts}"
    base.update({"report__enabled": False, "train__early_stopping_patience": None})
    base.update(overrides_from(args.set))
    return base, f"{tag}-s{steps}"


def seed_summary(runs: list[Path]) -> list[str]:
    """Test ``mean ± std`` of `METRICS` over ``runs`` by `deepmetric.compare` (``deepmetric compare RUNS`` prints the
    same), which also checks that they differ in nothing but the seed."""
    groups = group_runs([read_run(run) for run in runs], ignore=(*IGNORED, *NEUTRAL))  # as train_once reuses them
    if len(groups) != 1:
        raise ValueError(f"the runs of one cell differ in more than the seed: {[g.label for g in groups]}")
    stats = summarise(groups, list(METRICS))[0]["stats"]
    return [f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}" for m in METRICS]


def quality(args) -> list[str]:
    base, tag = setup(args)
    rows = []
    for twin in args.twins:
        study, without, preset_without, with_, preset_with = TWINS[twin]
        for variant, preset in ((without, preset_without), (with_, preset_with)):
            runs = []
            for seed in args.seeds:
                run = Path(args.runs) / tag / f"{preset}-seed{seed}"
                print(f"training {run}", flush=True)
                train_once(PRESETS / f"{preset}.yaml", {**base, "train__seed": seed}, run)
                runs.append(run)
            cells = seed_summary(runs)
            rows.append(f"| {study} | {variant} | " + " | ".join(cells) + " |")
    return [
        command_line(), "",
        f"{tag}: ImageNet-pretrained EfficientNet-Lite0 (benchmarks/_regime.py), seeds {args.seeds}, checkpoint "
        "chosen on held-out training classes, test split", "",
        "| method | variant | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS), *rows,
    ]  # fmt: skip


def main(argv=None):
    args = parser().parse_args(argv)
    if args.step_time == bool(args.protocol):
        raise SystemExit("give --step-time or --protocol (one of them)")
    emit(step_time(args) if args.step_time else quality(args), args.write)


if __name__ == "__main__":
    main()

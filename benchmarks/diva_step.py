"""DiVA training step vs a margin-only step at the same batch, backbone and total embedding size, in one process.

    python benchmarks/diva_step.py [--backbone small_resnet --size 64 --classes 56 --per-class 2 --steps 20]

Margin-only: one 4·D-d head, margin loss with learnable β and distance-weighted triplets (DiVA's discriminative
task). DiVA: four D-d heads, the three margin tasks, DaNCE with the EMA key encoder (an extra no-grad forward of
view B) and the decorrelation regressors. A step = forward, losses, backward, Adam step and the method's
``on_step_end`` (EMA + queue). Runs alternate and the medians are compared (target: DiVA ≤ 1.6 × margin-only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from deepmetric.losses import DivaMarginLoss
from deepmetric.methods import StandardMethod
from deepmetric.methods.diva import HEADS, DivaMethod
from deepmetric.miners import DistanceWeightedTripletMiner
from deepmetric.models import Embedder, build_backbone

if not __package__:  # run as `python benchmarks/diva_step.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit, median_step_times


def make(kind: str, args):
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, in_channels=3, width=args.width)
    classes = args.classes
    if kind == "margin":
        model = Embedder(backbone, {"embedding": 4 * args.dim})
        method = StandardMethod(model, DivaMarginLoss(classes), DistanceWeightedTripletMiner())
    else:
        model = Embedder(backbone, dict.fromkeys(HEADS, args.dim))
        method = DivaMethod(model, classes, queue_size=args.queue)
    return method, torch.optim.Adam(method.param_groups(1e-4, 4e-4))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="small_resnet")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=56)
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queue", type=int, default=3360)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    n = args.classes * args.per_class
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    shape = (n, 3, args.size, args.size)
    batches = [{"views": [torch.randn(shape, generator=g), torch.randn(shape, generator=g)], "label": labels}
               for _ in range(4)]  # fmt: skip
    methods = {kind: make(kind, args) for kind in ("margin", "diva")}
    results = median_step_times(methods, batches, args.steps, args.repeats)
    m, d = results["margin"], results["diva"]
    emit([
        command_line(), "",
        f"{args.backbone} (width {args.width}) on {args.size}² RGB, batch {args.classes} × {args.per_class} = {n}, "
        f"4 × {args.dim}-d (DiVA) vs {4 * args.dim}-d (margin), {torch.get_num_threads()} torch threads", "",
        "| step | median s / step |", "|---|---:|",
        f"| margin only (distance-weighted) | {m:.3f} |",
        f"| DiVA (4 tasks, EMA key encoder, decorrelation) | {d:.3f} |", "",
        f"DiVA step = {d / m:.2f} × the margin-only step (target ≤ 1.6).",
    ], args.write)  # fmt: skip


if __name__ == "__main__":
    main()

"""CCP's training step against its base loss at the same batch and backbone, in one process; k-center timing.

    python benchmarks/ccp_step.py [--backbone small_resnet --size 64 --classes 8 --per-class 4 --steps 20]

Base: the pair loss on the batch (C2, every pair). CCP: 0.1 × the same in-batch loss + the loss against all C·K
proxies + the proximal term λ/2‖θ − θ̄‖² (active, as from the second stage on). A step = forward, loss, backward,
Adam step. Runs alternate and the medians are compared (target: CCP ≤ 1.15 × base), for a CUB-sized proxy set
(75 classes × 8) and an SOP-sized one (8,489 × 4 = 33,956 proxies). Then greedy k-center on an SOP-sized pool
(11,318 classes × 7 candidates × 128-d, 4 picks, seeded with the previous proxies; target < 1 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from deepmetric.losses import MarginContrastiveLoss
from deepmetric.methods import StandardMethod
from deepmetric.methods.ccp import CCPMethod
from deepmetric.methods.ccp_components import kcenter_per_class
from deepmetric.models import Embedder, build_backbone

if not __package__:  # run as `python benchmarks/ccp_step.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit, median_step_times


def make(kind: str, args, num_classes: int = 0, per_class: int = 0):
    torch.manual_seed(0)
    model = Embedder(build_backbone(args.backbone, in_channels=3, width=args.width), {"embedding": args.dim})
    if kind == "base":
        method = StandardMethod(model, MarginContrastiveLoss(0.0, 0.5))
    else:
        method = CCPMethod(model, num_classes, MarginContrastiveLoss(0.0, 0.5), proxies_per_class=per_class)
        with torch.no_grad():
            method.bank.proxies.normal_()
        method.proximal.anchor()  # λ(θ − θ̄) on, as in every stage after the first
    return method, torch.optim.Adam(method.param_groups(1e-5, 1e-4))


def kcenter_time(repeats: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    pool, seeds = torch.randn(11_318, 7, 128, generator=g), torch.randn(11_318, 4, 128, generator=g)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        kcenter_per_class(pool, 4, seeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="small_resnet")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    n = args.classes * args.per_class
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    batches = [{"views": [torch.randn(n, 3, args.size, args.size, generator=g)], "label": labels} for _ in range(4)]
    methods = {"base": make("base", args), "CCP, 75 × 8 proxies": make("ccp", args, 75, 8),
               "CCP, 8,489 × 4 proxies": make("ccp", args, 8_489, 4)}  # fmt: skip
    results = median_step_times(methods, batches, args.steps, args.repeats)
    rows = [f"| {kind} | {t:.4f} | {t / results['base']:.3f} |" for kind, t in results.items()]
    kc = kcenter_time()
    emit([
        command_line(), "",
        f"{args.backbone} (width {args.width}) on {args.size}² RGB, batch {args.classes} × {args.per_class} = {n}, "
        f"{args.dim}-d, C2 loss, Adam, {torch.get_num_threads()} torch threads", "",
        "| step | median s / step | × base |", "|---|---:|---:|", *rows, "",
        f"k-center on an SOP-sized pool (11,318 × 7 × 128, 4 picks per class): {kc:.3f} s (median of 5).",
    ], args.write)  # fmt: skip


if __name__ == "__main__":
    main()

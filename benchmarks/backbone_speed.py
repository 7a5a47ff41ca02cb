"""Backbone throughput on this machine: training and embedding images per second of the EfficientNet-Lite trunks
(full and partial fine-tuning) against the from-scratch ``small_cnn``, at several input sizes.

One training step = forward of a class-balanced batch (32 images) through the backbone and a 128-d head, the
Proxy-Anchor loss, backward and an AdamW step; embedding = an eval-mode forward without autograd (batch 128).
Every Lite model runs channels-last (``model.channels_last``); BatchNorm statistics are frozen
(``model.freeze_bn``), as in the demo recipe. Partial fine-tuning trains the last ``--trainable-blocks`` MBConv
blocks and the head conv (``model.trainable_blocks``); the front runs without autograd.
Each cell: a warm-up of up to 2 s, then as many calls as fit in ``--seconds``, the rate over all of them.

    python benchmarks/backbone_speed.py [--sizes 64 96 128 224] [--seconds 6] [--write benchmarks/results/backbones.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss

from deepmetric.models import Embedder, build_backbone

if not __package__:  # run as `python benchmarks/backbone_speed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit

TRAIN_BATCH, EMBED_BATCH = 32, 128


def rate(fn, images: int, seconds: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < min(2.0, seconds / 2):  # warm-up: allocations, one-time kernel choices
        fn()
    calls, t0 = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls * images / (time.perf_counter() - t0)


def measure(name: str, size: int, trainable_blocks: int | None, seconds: float) -> tuple[float, float]:
    lite = name.startswith("efficientnet")
    channels = 3 if lite else 1
    backbone = build_backbone(name, in_channels=channels, pretrained=lite, freeze_bn=lite,
                              trainable_blocks=trainable_blocks, channels_last=lite)  # fmt: skip
    model = Embedder(backbone, {"embedding": 128})
    loss = ProxyAnchorLoss(8, 128)
    params = [p for p in model.parameters() if p.requires_grad] + list(loss.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(TRAIN_BATCH, channels, size, size)
    labels = torch.arange(TRAIN_BATCH) % 8

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss(model(x)["embedding"], labels).backward()
        optimizer.step()

    model.train()
    train = rate(train_step, TRAIN_BATCH, seconds)
    model.eval()
    xe = torch.randn(EMBED_BATCH, channels, size, size)

    def embed():
        with torch.no_grad():
            model(xe)

    return train, rate(embed, EMBED_BATCH, seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 224])
    parser.add_argument("--backbones", nargs="+",
                        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])  # fmt: skip
    parser.add_argument("--trainable-blocks", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [command_line(), "", f"{args.threads} torch threads, torch {torch.__version__}; images/s "
             f"(train batch {TRAIN_BATCH}, embed batch {EMBED_BATCH})", "",
             "| backbone | px | fine-tuning | train img/s | embed img/s | train ÷ small_cnn |",
             "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for size in args.sizes:
        base_train, base_embed = measure("small_cnn", size, None, args.seconds)
        lines.append(f"| small_cnn (from scratch) | {size} | full | {base_train:.0f} | {base_embed:.0f} | 1.00 |")
        print(lines[-1], flush=True)
        for name in args.backbones:
            for blocks in (None, args.trainable_blocks):
                train, embed = measure(name, size, blocks, args.seconds)
                mode = "full" if blocks is None else f"last {blocks} blocks"
                lines.append(f"| {name} | {size} | {mode} | {train:.0f} | {embed:.0f} | {train / base_train:.2f} |")
                print(lines[-1], flush=True)
    emit(lines, args.write)


if __name__ == "__main__":
    main()

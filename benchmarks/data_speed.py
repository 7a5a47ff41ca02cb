"""Data pipeline speed on Fashion-MNIST: load time, loader batch rate, and small_cnn's training consumption rate.

    python benchmarks/data_speed.py [--batches 200] [--classes-per-batch 16 --samples-per-class 8]

Prints (1) the time to load all 70,000 images from the IDX files, (2) batches per second delivered by the
DataLoader over the training split with the class-balanced sampler (alone, and with the batched augmentation the
trainer applies on the device), and (3) training steps per second of small_cnn with a 128-d head, triplet loss and
semi-hard mining (pytorch-metric-learning) and Adam on the same batches; the ratio must be ≥ 5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from deepmetric.data import (
    AugmentConfig,
    BatchAugment,
    ClassBalancedBatchSampler,
    ImageDataset,
    collate_batch,
    load_dataset,
    make_splits,
)
from deepmetric.models import Embedder, build_backbone

if not __package__:  # run as `python benchmarks/data_speed.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


def rate(iterator, n: int) -> tuple[float, list]:
    items = []
    t0 = time.perf_counter()
    for _ in range(n):
        items.append(next(iterator))
    return n / (time.perf_counter() - t0), items


def endless(loader, sampler):
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--classes-per-batch", type=int, default=5)
    ap.add_argument("--samples-per-class", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--write", help="append the results to this markdown file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    table = load_dataset("fashion_mnist")
    load_s = time.perf_counter() - t0
    splits = make_splits(table)
    train = ImageDataset(table, splits.train, labels=splits.train_labels)
    sampler = ClassBalancedBatchSampler(train.labels, args.classes_per_batch, args.samples_per_class, seed=0)
    loader = torch.utils.data.DataLoader(
        train, batch_sampler=sampler, collate_fn=collate_batch, num_workers=args.workers
    )
    augment = BatchAugment(AugmentConfig(train="pad_crop", size=28, padding=2, flip=True, normalization="gray"), True)

    loader_rate, batches = rate(endless(loader, sampler), args.batches)
    t0 = time.perf_counter()
    views = [augment(b["image"], seed=i) for i, b in enumerate(batches)]
    augment_rate = len(batches) / (time.perf_counter() - t0)
    pipeline_rate = 1 / (1 / loader_rate + 1 / augment_rate)

    from pytorch_metric_learning import losses, miners

    model = Embedder(build_backbone("small_cnn", in_channels=1), {"embedding": 128})
    loss_fn, miner = (
        losses.TripletMarginLoss(margin=0.2),
        miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_steps = min(30, len(batches))
    for i in range(3):  # warm-up
        emb = model(views[i])["embedding"]
        loss_fn(emb, batches[i]["label"], miner(emb, batches[i]["label"])).backward()
    t0 = time.perf_counter()
    for i in range(n_steps):
        opt.zero_grad(set_to_none=True)
        emb = model(views[i])["embedding"]
        loss = loss_fn(emb, batches[i]["label"], miner(emb, batches[i]["label"]))
        loss.backward()
        opt.step()
    train_rate = n_steps / (time.perf_counter() - t0)

    batch_size = args.classes_per_batch * args.samples_per_class
    lines = [
        command_line(),
        "",
        f"Fashion-MNIST, {len(table):,} images; batch {args.classes_per_batch} × {args.samples_per_class} "
        f"= {batch_size}; "
        f"{args.workers} loader workers; {torch.get_num_threads()} torch threads",
        "",
        "| stage | rate |",
        "|---|---:|",
        f"| load all 70,000 images (IDX) | {load_s:.2f} s |",
        f"| DataLoader + ClassBalancedBatchSampler | {loader_rate:,.0f} batches/s |",
        f"| batched augmentation (pad-crop + flip + normalise) | {augment_rate:,.0f} batches/s |",
        f"| loader + augmentation | {pipeline_rate:,.0f} batches/s |",
        f"| small_cnn training step (triplet + semi-hard miner, Adam) | {train_rate:,.1f} steps/s |",
        "",
        f"Loader + augmentation deliver batches {pipeline_rate / train_rate:,.0f}× faster than small_cnn "
        "consumes them.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()

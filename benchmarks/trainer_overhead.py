"""Trainer overhead: steps per second of `Trainer` against a minimal hand-written loop doing the same work.

Both run the same model (small_cnn + 128-d head), loss (margin + distance-weighted miner), class-balanced loader
and batched augmentation on the same Fashion-MNIST batches; the trainer adds its bookkeeping (schedule, logging,
progress, NaN guard, counters). Validation, checkpoints and the final test evaluation are switched off, so only
the per-step cost is compared. Runs alternate (trainer, loop, trainer, loop, …) and the medians are compared.

    python benchmarks/trainer_overhead.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepmetric.config import load_config
from deepmetric.training import Trainer

if not __package__:  # run as `python benchmarks/trainer_overhead.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import command_line, emit


def make_trainer(steps: int, out: str) -> Trainer:
    cfg = load_config(
        "configs/fashion_mnist/contrastive.yaml",
        [f"train.max_steps={steps}", "train.log_every=20", "report.enabled=false", "protocol.val_by=none"],
    )
    trainer = Trainer(cfg, out, quiet=True)
    trainer.finish = lambda: {}  # no test evaluation: per-step cost only
    return trainer


def time_trainer(steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(steps, out)
        t0 = time.perf_counter()
        trainer.fit()
        return steps / (time.perf_counter() - t0)


def time_hand_loop(steps: int) -> float:
    """The same work without the trainer: loader → augmentation → forward → loss → backward → step."""
    with tempfile.TemporaryDirectory() as out:
        t = make_trainer(steps, out)  # only to build identical parts
        method, loader, augment, optimizer, sampler = t.method, t.loader, t.data.train_aug, t.optimizer, t.data.sampler
        step = 0
        t0 = time.perf_counter()
        while step < steps:
            sampler.set_epoch(step)
            for batch in loader:
                views = augment(batch["image"], seed=step)
                out_ = method.training_step({"views": [views], "label": batch["label"]})
                optimizer.zero_grad(set_to_none=True)
                out_["loss"].backward()
                optimizer.step()
                step += 1
                if step == steps:
                    break
        return steps / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", help="append the result to this markdown file")
    args = ap.parse_args(argv)
    time_hand_loop(5)  # warm-up
    trainer_rates, loop_rates = [], []
    for _ in range(args.repeats):
        trainer_rates.append(time_trainer(args.steps))
        loop_rates.append(time_hand_loop(args.steps))
    t, h = statistics.median(trainer_rates), statistics.median(loop_rates)
    lines = [
        command_line(),
        "",
        f"configs/fashion_mnist/contrastive.yaml model and loss, {args.steps} steps × {args.repeats} alternating "
        "repeats, "
        f"{torch.get_num_threads()} torch threads",
        "",
        "| | steps/s (median) | all runs |",
        "|---|---:|---|",
        f"| Trainer | {t:.2f} | {', '.join(f'{r:.2f}' for r in trainer_rates)} |",
        f"| hand-written loop | {h:.2f} | {', '.join(f'{r:.2f}' for r in loop_rates)} |",
        "",
        f"Trainer overhead: {100 * (h / t - 1):+.1f} % time per step (target ≤ 5 %).",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()

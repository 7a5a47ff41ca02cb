"""The trainer: data → augmentation → method → optimizer, with validation, selection, exact resume and reports.

Run directory (DESIGN §5): ``config.yaml``, ``log.jsonl``, ``metrics.json``, ``checkpoints/last.pt``,
``checkpoints/best.pt``, ``report.html``. Determinism: the sampler depends on (seed, epoch), each step's
augmentation on (seed, step), initialisation on the seed; ``last.pt`` holds the model, method, optimizer,
schedule, sampler position, every RNG state and the counters, so a resumed run ends where an uninterrupted one
would.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config, to_yaml
from ..data import (
    BatchAugment,
    ClassBalancedBatchSampler,
    ImageDataset,
    collate_batch,
    load_dataset,
    make_splits,
)
from ..models import Embedder, build_embedder
from ..precision import DTYPES
from .checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
    write_text,
)
from .evaluate import embed_split, gather_embedded, score
from .schedule import LRSchedule

CHECKPOINT_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN or Inf; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if available, then Apple's MPS, then the CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    if device.type == "mps" and not mps_available:
        raise ValueError(f"train.device={name!r} but Apple's MPS is not available on this machine")
    return device


def build_method(cfg: Config, model: Embedder, num_classes: int):
    """The method named by ``cfg.method.name`` (the trainer never names one itself)."""
    from ..methods import registry

    return registry.build(cfg, model, num_classes)


def build_optimizer(cfg, groups):
    name = cfg.name
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Progress:
    """A tqdm bar on a terminal; plain log lines when there is none or ``CI`` is set."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self.enabled = enabled
        self.plain = bool(os.environ.get("CI")) or not sys.stderr.isatty()
        if enabled and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)

    def update(self, info: dict, n: int = 1) -> None:
        if self.plain or not self.enabled:
            return
        self.bar.update(n)
        if info:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=False)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.plain:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.write(text)

    def close(self) -> None:
        if self.enabled and not self.plain:
            self.bar.close()


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
                 existing: bool = False):  # fmt: skip
        """``resume``: continue the run in ``run_dir``; ``existing``: only load it (evaluate, embed, report)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if not (resume or existing) and ((self.run_dir / "log.jsonl").exists() or self.ckpt_dir.exists()):
            raise FileExistsError(
                f"run directory {self.run_dir} already holds a run: continue it with --resume {self.run_dir}, "
                "or choose another --output"
            )
        # under torchrun: join the process group; rank 0 alone writes files and shows progress
        device = cfg.train.device
        self.device = distributed.setup(device) if distributed.requested() else resolve_device(device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.quiet = quiet or not self.main
        seed_everything(cfg.train.seed)
        self._setup_data()
        torch.manual_seed(cfg.train.seed)  # initialisation independent of what data loading drew
        from ..methods.registry import heads

        model = build_embedder(cfg, self.train_set.channels, heads=heads(cfg))
        if self.world_size > 1:  # BatchNorm over the global batch, as in one process
            distributed.convert_batchnorm(model, self.device)
        self.method = build_method(cfg, model, self.num_classes).to(self.device, DTYPES[cfg.train.dtype])
        self.train_module = self.method
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            try:  # every rank computes the same buffers (global-batch BatchNorm, queues): no per-step broadcast
                self.train_module = DistributedDataParallel(self.method, device_ids=ids, forward_sync_buffers=False)
            except TypeError:  # torch versions before forward_sync_buffers
                self.train_module = DistributedDataParallel(self.method, device_ids=ids, broadcast_buffers=False)
        groups = self.method.param_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.head_lr_mult)
        self.optimizer = build_optimizer(cfg.optim, groups)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.schedule = LRSchedule(cfg.schedule, self.optimizer, self.total_steps)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_value, self.best_step, self.evals_since_best = None, None, 0
        self.best_val_metrics: dict = {}
        self.baseline: dict | None = None
        self.history: list[dict] = []
        self.bad_images: list[str] = []
        self.tensorboard = None
        if resume:
            self._resume()
        distributed.barrier()  # every rank checked the run directory before rank 0 writes to it

    # ----------------------------------------------------------------------------------------------- setup
    def _setup_data(self) -> None:
        cfg = self.cfg
        self.table = load_dataset(cfg.data.name, cfg.data.root, **cfg.data.options)
        self.splits = make_splits(self.table, cfg.protocol, seed=cfg.train.seed)
        train_raw = self.splits.train_labels[self.splits.train]
        self.train_classes = np.unique(train_raw)
        contiguous = np.full(len(self.table), -1, dtype=np.int64)
        contiguous[self.splits.train] = np.searchsorted(self.train_classes, train_raw)
        self.num_classes = len(self.train_classes)
        common = dict(channels=cfg.data.channels, load_size=cfg.data.load_size if self.table.paths else None,
                      on_bad_image=cfg.data.on_bad_image)  # fmt: skip
        self.train_set = ImageDataset(self.table, self.splits.train, labels=contiguous, **common)
        self.val_set = ImageDataset(self.table, self.splits.val, **common) if len(self.splits.val) else None
        self.test_set = ImageDataset(self.table, self.splits.test, **common)
        self.sampler = ClassBalancedBatchSampler(
            self.train_set.labels, cfg.data.classes_per_batch, cfg.data.samples_per_class, seed=cfg.train.seed,
            small_classes=cfg.data.small_classes, rank=distributed.rank(), world_size=distributed.world_size(),
        )  # fmt: skip
        # a private generator: creating an iterator must not draw from the global RNG (methods draw from it, and a
        # resumed run creates one more iterator than an uninterrupted one)
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.sampler, collate_fn=collate_batch, num_workers=cfg.data.workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.train.seed),
        )  # fmt: skip
        self.train_aug = BatchAugment(cfg.augment, train=True).to(self.device)
        self.eval_aug = BatchAugment(cfg.augment, train=False).to(self.device)

    # --------------------------------------------------------------------------------------------- helpers
    def _log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.tensorboard is not None:
            group = record["type"] if record["type"] == "train" else record.get("split", "eval")
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.tensorboard.add_scalar(f"{group}/{key}", value, record["step"])

    def _open_tensorboard(self):
        if not self.cfg.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from e
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _augmentation_seed(self, step: int) -> int:
        return (self.cfg.train.seed * 1_000_003 + step) % (2**63 - 1)

    def inference_meta(self) -> dict:
        """What loading a checkpoint for inference needs besides the config: no dataset required."""
        native = self.table.images.shape[-1] if self.table.images is not None else None
        return {
            "num_classes": self.num_classes,
            "in_channels": self.train_set.channels,
            "load_size": self.cfg.data.load_size if native is None else int(native),
            "class_names": {int(k): str(v) for k, v in (self.table.class_names or {}).items()},
        }

    def _state(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "meta": self.inference_meta(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_value": self.best_value, "best_step": self.best_step, "evals_since_best": self.evals_since_best,
            "best_val_metrics": self.best_val_metrics, "history": self.history, "bad_images": self.bad_images,
            "baseline": self.baseline, "rng": rng_state(),
        }  # fmt: skip

    def _resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            self._say(f"no checkpoint in {self.ckpt_dir}: starting from the beginning")
            return
        state = load_checkpoint(path)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("step", "epoch", "batch_in_epoch", "best_value", "best_step", "evals_since_best",
                    "best_val_metrics", "history", "bad_images"):  # fmt: skip
            setattr(self, key, state[key])
        self.baseline = state.get("baseline")
        set_rng_state(state["rng"])
        if self.main:
            self._truncate_log(self.step)
        self._say(f"resumed from step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint (by the interrupted process) so the log reads as one run."""
        log = self.run_dir / "log.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text(log, "".join(line + "\n" for line in kept))

    def record(self, record: dict, text: str | None = None) -> None:
        """A method's event (e.g. a CCP stage change): into log.jsonl, and a progress line."""
        self._log({"epoch": self.epoch, **record})
        if text:
            progress = getattr(self, "progress", None)
            progress.line(text) if progress is not None else self._say(text)

    def progress_iter(self, iterable, description: str):
        """``iterable`` with a progress bar unless quiet (for a method's long side work, e.g. embedding a pool)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=description, unit="batch", leave=False, disable=self.quiet or None)

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"deepmetric: {text}", file=sys.stderr, flush=True)

    def save_last(self) -> None:
        if self.main:
            save_checkpoint(self._state(), self.ckpt_dir / "last.pt")

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str, progress: bool = False) -> dict[str, float]:
        """Metrics of ``split``; under torchrun every rank embeds a part, rank 0 scores, every rank gets the result."""
        emb = self.embed(split, progress)
        metrics = self.score(split, emb) if self.main else None
        return distributed.broadcast_object(metrics)

    def embed(self, split: str, progress: bool = False, trunk: bool = False):
        """The method's test-time embeddings of ``split`` (``val`` or ``test``), in order (gathered over ranks);
        ``trunk``: with the backbone's pooled features too."""
        dataset = {"val": self.val_set, "test": self.test_set}[split]
        if dataset is None:
            raise ValueError(f"this run has no {split} split (protocol.val_by={self.cfg.protocol.val_by!r})")
        if len(dataset) < self.world_size:  # too small to share: every rank embeds all of it
            return embed_split(self.method, dataset, self.eval_aug, self.device, self.cfg.data.eval_batch_size,
                               trunk=trunk)  # fmt: skip
        positions = np.arange(len(dataset))[distributed.shard(len(dataset))] if self.world_size > 1 else None
        emb = embed_split(self.method, dataset, self.eval_aug, self.device, self.cfg.data.eval_batch_size,
                          self.cfg.data.workers, progress and self.main, positions=positions, trunk=trunk)  # fmt: skip
        return gather_embedded(emb) if self.world_size > 1 else emb

    def _baseline(self) -> dict:
        """The model as built, before any training step, on validation and test (``baseline.val`` / ``.test``), and,
        for a pretrained trunk, its pooled features without the head (``baseline.trunk.val`` / ``.test``). The RNG
        state is left as it was, so a run with the baseline trains exactly as one without."""
        pretrained = bool(self.cfg.model.pretrained or self.cfg.model.weights)
        out: dict = {}
        saved = rng_state()
        for split in ("val", "test"):
            if {"val": self.val_set, "test": self.test_set}[split] is None:
                continue
            emb = self.embed(split, progress=not self.quiet, trunk=pretrained)
            metrics = self.score(split, emb) if self.main else None
            out[split] = distributed.broadcast_object(metrics)
            if pretrained:
                trunk = self.score(split, emb.with_embeddings(emb.trunk)) if self.main else None
                out.setdefault("trunk", {})[split] = distributed.broadcast_object(trunk)
        set_rng_state(saved)
        for split in ("val", "test"):
            if split in out:
                record = {"type": "eval", "split": split, "step": 0, "epoch": 0, "baseline": True, **out[split]}
                self._log(record)
        key = self.cfg.train.select_metric
        shown = [f"{split} {key} {out[split].get(key, float('nan')):.4f}" for split in ("val", "test") if split in out]
        shown += [f"trunk features {split} {m.get(key, float('nan')):.4f}" for split, m in out.get("trunk", {}).items()]
        self._say("baseline (before training): " + ", ".join(shown))
        return out

    def score(self, split: str, emb) -> dict[str, float]:
        """Metrics of embeddings of ``split`` (query / gallery masks where the protocol has them)."""
        masks = {}
        if split == "test" and self.splits.test_query is not None:
            pos = {int(i): p for p, i in enumerate(emb.indices)}
            masks["query_mask"] = np.array([pos[int(i)] for i in self.splits.test_query])
            masks["gallery_mask"] = np.array([pos[int(i)] for i in self.splits.test_gallery])
        return score(emb, self.cfg.eval, superclass=self.splits.protocol == "superclass", seed=self.cfg.train.seed,
                     **masks)  # fmt: skip

    def _select_key(self, metrics: dict) -> str:
        key = self.cfg.train.select_metric
        if key in metrics:
            return key
        for prefix in ("fine/", "coarse/"):
            if prefix + key in metrics:
                return prefix + key
        raise KeyError(f"train.select_metric={key!r} is not among the metrics {sorted(metrics)}")

    def _validate(self) -> bool:
        """Evaluate on the selection split; save best.pt on improvement. Returns True to stop early."""
        split = self.cfg.train.select_split
        if split == "val" and self.val_set is None:
            return False
        metrics = self.evaluate(split)
        key = self._select_key(metrics)
        value = metrics[key]
        record = {"type": "eval", "split": split, "step": self.step, "epoch": self.epoch, **metrics}
        self.history.append(record)
        self._log(record)
        self.method.on_validation_end(metrics, self)
        self.schedule.on_validation(value)
        improved = self.best_value is None or value > self.best_value
        if improved:
            self.best_value, self.best_step, self.evals_since_best = value, self.step, 0
            self.best_val_metrics = metrics
            if self.main:
                save_checkpoint({"method": self.method.state_dict(), "step": self.step, "metric": key,
                                 "value": value, "meta": self.inference_meta()}, self.ckpt_dir / "best.pt")  # fmt: skip
        else:
            self.evals_since_best += 1
        self.progress.line(
            f"step {self.step}: {split} {key} {value:.4f}"
            + (" (best)" if improved else f" (best {self.best_value:.4f})")
        )
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and self.evals_since_best >= patience

    # ------------------------------------------------------------------------------------------- training
    def _train_step(self, batch) -> dict[str, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        shard = None
        if self.world_size > 1:  # this rank's rows of the global batch, augmented as one process would
            per_rank = self.cfg.data.classes_per_batch * self.cfg.data.samples_per_class // self.world_size
            shard = (per_rank * self.world_size, per_rank * self.rank)
        views = self.train_aug(images, seed=self._augmentation_seed(self.step), views=self.method.num_views,
                               shard=shard)  # fmt: skip
        views = views if isinstance(views, list) else [views]
        inputs = {"views": views, "label": batch["label"].to(self.device), "index": batch["index"].to(self.device)}
        with torch.autocast(self.device.type, enabled=self.use_amp):
            parts = self.train_module(inputs)  # = method.training_step, through DDP under torchrun
        loss = parts["loss"]
        if self.device.type == "cpu" and not math.isfinite(float(loss.detach())):  # free on CPU; on GPU checked at logs
            self._nonfinite(parts)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip_norm, clip_value = self.cfg.optim.grad_clip_norm, self.cfg.optim.grad_clip_value
        if clip_norm or clip_value:
            self.scaler.unscale_(self.optimizer)
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(self.method.parameters(), clip_norm)
            if clip_value:
                torch.nn.utils.clip_grad_value_(self.method.parameters(), clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts

    def _nonfinite(self, parts: dict) -> None:
        described = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step + 1} ({described}); the run stopped and the last good checkpoint "
            f"({self.ckpt_dir / 'last.pt'}, step {self._last_saved_step}) is kept. Lower optim.lr or set "
            "optim.grad_clip_norm."
        )

    def fit(self) -> dict:
        """Train (or continue), evaluate the best checkpoint on test, write metrics.json and the report."""
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", to_yaml(cfg))
        self._last_saved_step = self.step
        self.tensorboard = self._open_tensorboard() if self.main else None
        self.progress = Progress(self.total_steps, self.step, enabled=not self.quiet)
        if self.step == 0 and self.cfg.train.baseline and self.baseline is None:
            self.baseline = self._baseline()
        self.method.on_train_start(self)
        stop = False
        t_last, step_last = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps and not stop:
                self.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
                for batch in self.loader:
                    self.bad_images += batch["bad_paths"]
                    if batch["image"].shape[0] == 0:
                        continue
                    self.schedule.apply(self.step)
                    parts = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    self.method.on_step_end(self.step)
                    if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                        values = {k: float(v.detach()) for k, v in parts.items()}
                        if not all(math.isfinite(v) for v in values.values()):
                            self._nonfinite(parts)
                        now = time.perf_counter()
                        rate = (self.step - step_last) / max(now - t_last, 1e-9)
                        t_last, step_last = now, self.step
                        self._log({"type": "train", "step": self.step, "epoch": self.epoch, **values,
                                   "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": rate})  # fmt: skip
                        self.progress.update({**values, "it/s": rate}, 0)
                        if self.progress.plain and self.progress.enabled:
                            self.progress.line(f"step {self.step}/{self.total_steps} loss {values['loss']:.4f} "
                                               f"({rate:.1f} steps/s)")  # fmt: skip
                    self.progress.update({}, 1)
                    end_of_epoch = self.batch_in_epoch >= self.steps_per_epoch
                    eval_due = (cfg.train.eval_every_steps and self.step % cfg.train.eval_every_steps == 0) or (
                        not cfg.train.eval_every_steps and end_of_epoch
                    )
                    if end_of_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if eval_due or self.step == self.total_steps:
                        stop = self._validate()
                    if eval_due or end_of_epoch or self.step == self.total_steps or self._checkpoint_due():
                        self.save_last()
                        self._last_saved_step = self.step
                    if stop or self.step >= self.total_steps or end_of_epoch:
                        break
        finally:
            self.progress.close()
        metrics = self.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return metrics

    def _checkpoint_due(self) -> bool:
        every = int(os.environ.get("DEEPMETRIC_CHECKPOINT_EVERY", "0"))  # for resume tests and very long epochs
        return every > 0 and self.step % every == 0

    def finish(self) -> dict:
        """Test evaluation with the best checkpoint (or the last weights without validation), metrics.json, report."""
        best = self.ckpt_dir / "best.pt"
        distributed.barrier()  # rank 0 has written best.pt
        if self.best_value is not None:  # a validation selected a checkpoint
            self.method.load_state_dict(load_checkpoint(best)["method"])
            selected = {"split": self.cfg.train.select_split, "step": self.best_step,
                        "metric": self._select_key(self.best_val_metrics), "value": self.best_value}  # fmt: skip
        else:  # no validation: the final weights are the selected ones, and best.pt says so
            selected = {"split": None, "step": self.step, "metric": None, "value": None}
            if self.main:
                save_checkpoint({"method": self.method.state_dict(), "step": self.step, "metric": None,
                                 "value": None, "meta": self.inference_meta()}, best)  # fmt: skip
        test_embedded = self.embed("test", progress=not self.quiet)
        test = distributed.broadcast_object(self.score("test", test_embedded) if self.main else None)
        self._log({"type": "eval", "split": "test", "step": self.step, **test})
        metrics = {"val": self.best_val_metrics, "test": test, "selected": selected, "steps": self.step,
                   "protocol": self.splits.protocol, "splits": self.splits.info}  # fmt: skip
        if self.baseline:
            metrics["baseline"] = self.baseline
        if self.cfg.train.select_split == "test":
            metrics["warning"] = "model selected on the test split (train.select_split=test): test metrics are biased"
        if self.bad_images:
            metrics["skipped_images"] = {"count": len(self.bad_images), "paths": sorted(set(self.bad_images))}
        if self.main:
            write_json(self.run_dir / "metrics.json", metrics)
            if self.cfg.report.enabled:
                from ..report import write_report

                write_report(self.run_dir, trainer=self, test_embedded=test_embedded)
        distributed.barrier()
        return metrics

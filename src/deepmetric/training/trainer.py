"""The training loop: batches → augmentation → the method's step → the optimizer, with validation and exact resume.

The run's parts come from `deepmetric.run` (method, data), its outputs go through `RunLog`, model selection and early
stopping through `Selection`. Run directory: ``config.yaml``, ``log.jsonl``, ``metrics.json``,
``checkpoints/last.pt``, ``checkpoints/best.pt``, ``report.html``. Determinism: the sampler depends on (seed, epoch),
each step's augmentation on (seed, step), initialisation on the seed; ``last.pt`` holds the method, optimizer,
schedule, sampler position, every RNG state and the counters, so a resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config, to_yaml
from ..data import collate_batch
from ..errors import RunError
from ..methods import MethodContext
from ..precision import DTYPES
from ..run import (
    build_data,
    build_method,
    build_model,
    embed_split_of,
    embed_training_images,
    resolve_device,
    score_split,
)
from .baseline import score_baseline
from .checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
    write_text,
)
from .logging import RunLog
from .optim import build_optimizer
from .schedule import LRSchedule
from .selection import Selection

CHECKPOINT_VERSION = 1


class NonFiniteLossError(RunError):
    """Raised when a loss becomes NaN or Inf; the last good checkpoint is kept."""


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False, quiet: bool = False):
        """``resume``: continue the run in ``run_dir``."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if not resume and ((self.run_dir / "log.jsonl").exists() or self.ckpt_dir.exists()):
            raise FileExistsError(
                f"run directory {self.run_dir} already holds a run: continue it with --resume {self.run_dir}, "
                "or choose another --output"
            )
        # under torchrun: join the process group; rank 0 alone writes files and shows progress
        device = cfg.train.device
        self.device = distributed.setup(device) if distributed.requested() else resolve_device(device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.log = RunLog(self.run_dir, main=self.main, quiet=quiet, tensorboard=cfg.train.tensorboard)
        seed_everything(cfg.train.seed)
        self.data = build_data(cfg, self.device)
        # a private generator: creating an iterator must not draw from the global RNG (methods draw from it, and a
        # resumed run creates one more iterator than an uninterrupted one)
        self.loader = torch.utils.data.DataLoader(
            self.data.train_set, batch_sampler=self.data.sampler, collate_fn=collate_batch,
            num_workers=cfg.data.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )  # fmt: skip
        torch.manual_seed(cfg.train.seed)  # initialisation independent of what data loading drew
        model = build_model(cfg, self.data.train_set.channels)
        if self.world_size > 1:  # BatchNorm over the global batch, as in one process
            distributed.convert_batchnorm(model, self.device)
        method = build_method(cfg, self.data.train_set.channels, self.data.num_classes, model=model)
        self.method = method.to(self.device, DTYPES[cfg.train.dtype])
        self.train_module = distributed.wrap(self.method, self.device) if self.world_size > 1 else self.method
        groups = self.method.param_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.head_lr_mult)
        self.optimizer = build_optimizer(cfg.optim, groups)
        self.steps_per_epoch = len(self.data.sampler)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.schedule = LRSchedule(cfg.schedule, self.optimizer, self.total_steps)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.selection = Selection(cfg.train.select_metric, cfg.train.early_stopping_patience)
        self.step, self.epoch, self.batch_in_epoch, self._last_saved_step = 0, 0, 0, 0
        self.baseline: dict | None = None
        self.history: list[dict] = []
        self.bad_images: list[str] = []
        self.context = MethodContext(
            optimizer=self.optimizer, train_labels=self.data.train_set.labels, seed=cfg.train.seed,
            select_key=self.selection.key, record=self.record, progress=self.log.iterate,
            embed_training=self.embed_training,
        )  # fmt: skip
        if resume:
            self._resume()
        distributed.barrier()  # every rank checked the run directory before rank 0 writes to it

    # ------------------------------------------------------------------------------------- state, resume
    def _state(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION, "meta": self.data.inference_meta(self.cfg),
            "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            **self.selection.state_dict(), "history": self.history, "bad_images": self.bad_images,
            "baseline": self.baseline, "rng": rng_state(),
        }  # fmt: skip

    def _resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            self.log.say(f"no checkpoint in {self.ckpt_dir}: starting from the beginning")
            return
        state = load_checkpoint(path)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.selection.load_state_dict(state)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.history, self.bad_images, self.baseline = state["history"], state["bad_images"], state.get("baseline")
        set_rng_state(state["rng"])
        self.log.truncate(self.step)
        self.log.say(f"resumed from step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def save_last(self) -> None:
        if self.main:
            save_checkpoint(self._state(), self.ckpt_dir / "last.pt")
        self._last_saved_step = self.step

    def _save_best(self, key: str | None, value: float | None) -> None:
        if self.main:
            save_checkpoint({"method": self.method.state_dict(), "step": self.step, "metric": key, "value": value,
                             "meta": self.data.inference_meta(self.cfg)}, self.ckpt_dir / "best.pt")  # fmt: skip

    # ------------------------------------------------------------------------------ the method's context
    def record(self, record: dict, text: str | None = None) -> None:
        """A method's event (e.g. a CCP stage change): into log.jsonl, and a progress line."""
        self.log.write({"epoch": self.epoch, **record})
        if text:
            self.log.say(text)

    def embed_training(self, positions: np.ndarray, fn, seed: int) -> torch.Tensor:
        """`deepmetric.run.embed_training_images` for this run (the context's ``embed_training``)."""
        return embed_training_images(self.data, self.cfg, self.device, positions, fn, seed, self.log.iterate)

    # ------------------------------------------------------------------------------------------ evaluation
    def embed(self, split: str, progress: bool = False, trunk: bool = False):
        """The method's test-time embeddings of ``split`` (``val`` or ``test``), gathered over ranks."""
        return embed_split_of(self.method, self.data, split, self.cfg, self.device, progress=progress and not
                              self.log.quiet, trunk=trunk)  # fmt: skip

    def score(self, split: str, emb) -> dict[str, float]:
        return score_split(self.method, self.data, split, emb, self.cfg)

    def evaluate(self, split: str, progress: bool = False) -> dict[str, float]:
        """Metrics of ``split``; under torchrun every rank embeds a part, rank 0 scores, every rank gets the result."""
        emb = self.embed(split, progress)
        return distributed.broadcast_object(self.score(split, emb) if self.main else None)

    def _validate(self) -> bool:
        """Evaluate on the selection split; save best.pt on improvement. Returns True to stop early."""
        split = self.cfg.train.select_split
        if split == "val" and self.data.val_set is None:
            return False
        metrics = self.evaluate(split)
        record = {"type": "eval", "split": split, "step": self.step, "epoch": self.epoch, **metrics}
        self.history.append(record)
        self.log.write(record)
        self.context.step = self.step
        self.method.on_validation_end(metrics, self.context)
        key = self.selection.key(metrics)
        self.schedule.on_validation(metrics[key])
        improved = self.selection.update(metrics, self.step)
        if improved:
            self._save_best(key, metrics[key])
        best = self.selection.best_value
        self.log.say(f"step {self.step}: {split} {key} {metrics[key]:.4f}" + (" (best)" if improved else
                                                                           f" (best {best:.4f})"))  # fmt: skip
        return self.selection.should_stop

    # -------------------------------------------------------------------------------------------- training
    def _train_step(self, batch) -> dict[str, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        shard = None
        if self.world_size > 1:  # this rank's rows of the global batch, augmented as one process would
            per_rank = self.cfg.data.classes_per_batch * self.cfg.data.samples_per_class // self.world_size
            shard = (per_rank * self.world_size, per_rank * self.rank)
        seed = (self.cfg.train.seed * 1_000_003 + self.step) % (2**63 - 1)
        views = self.data.train_aug(images, seed=seed, views=self.method.num_views, shard=shard)
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

    def _log_step(self, parts: dict, rate: float) -> None:
        values = {k: float(v.detach()) for k, v in parts.items()}
        if not all(math.isfinite(v) for v in values.values()):
            self._nonfinite(parts)
        self.log.write({"type": "train", "step": self.step, "epoch": self.epoch, **values,
                        "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": rate})  # fmt: skip
        progress = self.log.progress
        progress.update({**values, "it/s": rate}, 0)
        if progress.plain and progress.enabled:
            progress.line(f"step {self.step}/{self.total_steps} loss {values['loss']:.4f} ({rate:.1f} steps/s)")

    def fit(self) -> dict:
        """Train (or continue), evaluate the best checkpoint on test, write metrics.json and the report."""
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", to_yaml(cfg))
        self._last_saved_step = self.step
        if self.step == 0 and cfg.train.baseline and self.baseline is None:
            self.baseline = score_baseline(self)
        self.log.open(self.total_steps, self.step)
        self.context.step = self.step
        self.method.on_train_start(self.context)
        stop = False
        t_last, step_last = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps and not stop:
                self.data.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
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
                        now = time.perf_counter()
                        self._log_step(parts, (self.step - step_last) / max(now - t_last, 1e-9))
                        t_last, step_last = now, self.step
                    self.log.progress.update({}, 1)
                    end_of_epoch = self.batch_in_epoch >= self.steps_per_epoch
                    every = cfg.train.eval_every_steps
                    eval_due = (every and self.step % every == 0) or (not every and end_of_epoch)
                    if end_of_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if eval_due or self.step == self.total_steps:
                        stop = self._validate()
                    checkpoint_due = cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0
                    if eval_due or end_of_epoch or self.step == self.total_steps or checkpoint_due:
                        self.save_last()
                    if stop or self.step >= self.total_steps or end_of_epoch:
                        break
        finally:
            self.log.close_progress()
        try:
            return self.finish()
        finally:
            self.log.close()

    def finish(self) -> dict:
        """Test evaluation with the best checkpoint (or the last weights without validation), metrics.json, report."""
        distributed.barrier()  # rank 0 has written best.pt
        sel = self.selection
        if sel.best_value is not None:  # a validation selected a checkpoint
            self.method.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt")["method"])
            selected = {"split": self.cfg.train.select_split, "step": sel.best_step,
                        "metric": sel.key(sel.best_metrics), "value": sel.best_value}  # fmt: skip
        else:  # no validation: the final weights are the selected ones, and best.pt says so
            selected = {"split": None, "step": self.step, "metric": None, "value": None}
            self._save_best(None, None)
        test_embedded = self.embed("test", progress=True)
        test = distributed.broadcast_object(self.score("test", test_embedded) if self.main else None)
        self.log.write({"type": "eval", "split": "test", "step": self.step, **test})
        metrics = {"val": sel.best_metrics, "test": test, "selected": selected, "steps": self.step,
                   "protocol": self.data.splits.protocol, "splits": self.data.splits.info}  # fmt: skip
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

                write_report(self.run_dir, run=self, test_embedded=test_embedded)
        distributed.barrier()
        return metrics

"""The training loop: batches → augmentation → the method's step → the optimizer, with validation and exact resume.

The run's parts come from `deepmetric.run` (method, data, loader), its directory and checkpoints are a
`RunDirectory`, its outputs go through `RunLog`, model selection and early stopping through `Selection`, the final
``metrics.json`` and report through `deepmetric.training.outcome`. Determinism: the sampler depends on (seed, epoch),
each step's augmentation on (seed, step), initialisation on the seed; ``last.pt`` holds the method, optimizer,
schedule, sampler position, every RNG state, the counters and how many records ``log.jsonl`` had, so a resumed run
ends where an uninterrupted one would.

SIGINT / SIGTERM finish the current step, write ``last.pt`` and stop (`deepmetric.training.interrupts`);
non-finite losses, gradients and weights stop the run before a checkpoint could hold them
(`deepmetric.training.numerics`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config
from ..errors import ConfigError
from ..methods import MethodContext
from ..precision import DTYPES
from ..run import (
    build_data,
    build_method,
    build_model,
    build_train_loader,
    embed_split_of,
    embed_training_images,
    resolve_device,
    score_split,
)
from .baseline import score_baseline
from .checkpoint import load_checkpoint, rng_state, seed_everything, set_rng_state
from .interrupts import StopAtStepEnd
from .logging import RunLog
from .numerics import NumericGuard
from .optim import build_optimizer, clip_gradients
from .outcome import run_metrics, selected_checkpoint, write_outcome
from .run_directory import RunDirectory
from .schedule import LRSchedule
from .selection import Selection

CHECKPOINT_VERSION = 1


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False):  # fmt: skip
        """``resume``: continue the run in ``run_dir`` (its ``config.yaml`` may differ from ``cfg`` only in the keys
        `deepmetric.training.resume.RESUME_SAFE` lists); ``overwrite``: delete the run there first and start anew."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.directory = RunDirectory(run_dir, resume=resume, overwrite=overwrite)
        changes = self.directory.resume_changes(cfg) if resume else []  # before any data is read
        # under torchrun: join the process group; rank 0 alone writes files and shows progress
        device = cfg.train.device
        self.device = distributed.setup(device) if distributed.requested() else resolve_device(device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.log = RunLog(self.run_dir, main=self.main, quiet=quiet)
        if overwrite and self.directory.holds_run and self.main:
            self.directory.clear(self.log.say)
        if resume and self.main:
            self.directory.remove_stale(self.log.say)
        if changes:
            self.log.say("resuming with " + ", ".join(f"{k}: {a} → {b}" for k, a, b in changes))
        seed_everything(cfg.train.seed)
        self.data = build_data(cfg, self.device)
        self.loader = build_train_loader(self.data, cfg, self.device)
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
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.last_checkpoint: tuple[Path, int] | None = None  # the newest intact last.pt (or last.prev.pt), its step
        self.numerics = NumericGuard(self.device, cfg.train.skip_nonfinite_steps, self.use_amp, self.run_dir,
                                     lambda: self.last_checkpoint)  # fmt: skip
        self.signals = StopAtStepEnd(self.run_dir, lambda: (self.step, self.last_checkpoint), main=self.main,
                                     world_size=self.world_size, log_every=cfg.train.log_every)  # fmt: skip
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

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION, "meta": self.data.inference_meta(self.cfg),
            "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            **self.selection.state_dict(), "history": self.history, "bad_images": self.bad_images,
            "baseline": self.baseline, "rng": rng_state(), "log_records": self.log.records,
            "skipped_steps": self.numerics.skipped_steps,
        }  # fmt: skip

    def _resume(self) -> None:
        loaded = self.directory.load_last(self.log.warn, self.main)
        if loaded is None:
            self.log.say(f"no checkpoint in {self.directory.checkpoints}: starting from the beginning")
            self.log.truncate(0, 0)  # what a process killed before its first checkpoint logged is redone
            return
        state, path = loaded
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.selection.load_state_dict(state)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.history, self.bad_images, self.baseline = state["history"], state["bad_images"], state.get("baseline")
        self.numerics.skipped_steps = list(state.get("skipped_steps", []))
        set_rng_state(state["rng"])
        self.log.truncate(state.get("log_records"), self.step)
        self.last_checkpoint = (path, self.step)
        if self.step > self.total_steps:
            raise ConfigError(
                f"the step budget ({self.total_steps} steps: train.max_steps / train.epochs) is below step {self.step} "
                f"that {self.run_dir} reached: give a larger one"
            )
        self.log.say(f"resumed from step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _check_weights(self) -> None:
        """Every parameter (the model's, a loss's proxies) and the model's buffers (BatchNorm statistics) are sound;
        not a method's own bookkeeping buffers, which may hold ±Inf on purpose (CCP's "no best value yet")."""
        buffers = (("model." + name, b) for name, b in self.method.model.named_buffers())
        self.numerics.check_weights([*self.method.named_parameters(), *buffers], self.step, self.device.type)

    def save_last(self) -> None:
        self.numerics.check_on_device()
        self._check_weights()
        if self.main:
            self.log.sync()  # the records the checkpoint counts are on disk before it
            self.directory.save_last(self._state())
        self.last_checkpoint = (self.directory.last, self.step)

    def _save_best(self, key: str | None, value: float | None) -> None:
        self.numerics.check_on_device()
        self._check_weights()
        if self.main:
            self.directory.save_best({"method": self.method.state_dict(), "step": self.step, "metric": key,
                                      "value": value, "meta": self.data.inference_meta(self.cfg)})  # fmt: skip

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
        guard = self.numerics
        guard.watch_loss(parts, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts["loss"]).backward()
        if guard.every_step:  # after backward: under torchrun every rank sees the same (all-reduced) gradients
            problem = guard.step_problem(parts, self.method.named_parameters(), self.step + 1)
            if problem is not None:
                if not guard.skip_limit:
                    raise guard.error(problem)
                self._skip(problem)
                return parts
        clip_gradients(self.cfg.optim, self.method.parameters(), lambda: self.scaler.unscale_(self.optimizer))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts

    def _skip(self, problem: str) -> None:
        """train.skip_nonfinite_steps: no update this step (an error once more than allowed were skipped)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.numerics.skip(problem, self.step + 1)
        limit = self.numerics.skip_limit
        self.log.write({"type": "skipped", "step": self.step + 1, "epoch": self.epoch, "reason": problem})
        self.log.warn(f"{problem}: step skipped without an update ({len(self.numerics.skipped_steps)} of {limit})")

    def _log_step(self, parts: dict, rate: float) -> None:
        self.numerics.check_on_device()  # (GPU) the first bad step, before this step's values
        values = {k: float(v.detach()) for k, v in parts.items()}
        self.numerics.check_logged(values, parts, self.step)
        if not self.numerics.every_step:
            self._check_weights()
        self.log.write({"type": "train", "step": self.step, "epoch": self.epoch, **values,
                        "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": rate})  # fmt: skip
        progress = self.log.progress
        progress.update({**values, "it/s": rate}, 0)
        if progress.plain and progress.enabled:
            progress.line(f"step {self.step}/{self.total_steps} loss {values['loss']:.4f} ({rate:.1f} steps/s)")

    def fit(self) -> dict:
        """Train (or continue), evaluate the selected checkpoint on test, write metrics.json and the report."""
        if self.main:
            self.directory.write_config(self.cfg)
        try:
            with self.signals.installed():
                self.log.start_tracking(self.cfg, resumed=self.step > 0)
                if self.step == 0 and self.cfg.train.baseline and self.baseline is None:
                    self.baseline = score_baseline(self)
                self.log.open(self.total_steps, self.step)
                try:
                    self.signals.check(self.save_last)
                    self._loop()
                finally:
                    self.log.close_progress()
                self.signals.stop_deferring()  # training is done and saved: a signal now stops at once
                return self.finish()
        finally:
            self.log.close()

    def _loop(self) -> None:
        cfg = self.cfg
        self.context.step = self.step
        self.method.on_train_start(self.context)
        self.signals.under_way = self.step + 1
        stop = False
        t_last, step_last = time.perf_counter(), self.step
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
                if self.numerics.every_step:
                    self._check_weights()
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
                self.signals.check(self.save_last)
                self.signals.under_way = self.step + 1  # until now, a signal still waited for this step's checkpoint
                if stop or self.step >= self.total_steps or end_of_epoch:
                    break

    def finish(self) -> dict:
        """Test evaluation with the selected weights (the best checkpoint, or the last weights without validation),
        then metrics.json and the report (`deepmetric.training.outcome`)."""
        distributed.barrier()  # rank 0 has written best.pt
        selected = selected_checkpoint(self.selection, self.cfg, self.step)
        if selected["split"] is not None:
            self.method.load_state_dict(load_checkpoint(self.directory.best)["method"])
        else:  # no validation: the final weights are the selected ones, and best.pt says so
            self._save_best(None, None)
        test_embedded = self.embed("test", progress=True)
        test = distributed.broadcast_object(self.score("test", test_embedded) if self.main else None)
        self.log.write({"type": "eval", "split": "test", "step": self.step, **test})
        metrics = run_metrics(selection=self.selection, selected=selected, test=test, steps=self.step,
                              splits=self.data.splits, cfg=self.cfg, baseline=self.baseline,
                              skipped_steps=self.numerics.skipped_steps, bad_images=self.bad_images)  # fmt: skip
        if self.main:
            write_outcome(self.run_dir, metrics, self.cfg, run=self, test_embedded=test_embedded, log=self.log)
        distributed.barrier()
        return metrics

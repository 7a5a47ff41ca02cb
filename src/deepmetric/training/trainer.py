"""The training loop: batches → augmentation → the method's step → the optimizer, with validation and exact resume.

The run's parts come from `deepmetric.run` (method, data), its outputs go through `RunLog`, model selection and early
stopping through `Selection`. Run directory: ``config.yaml``, ``log.jsonl``, ``metrics.json``,
``checkpoints/last.pt`` (and the one before it, ``last.prev.pt``), ``checkpoints/best.pt``, each with its
``.sha256``, ``report.html``. Determinism: the sampler depends on (seed, epoch), each step's augmentation on (seed,
step), initialisation on the seed; ``last.pt`` holds the method, optimizer, schedule, sampler position, every RNG
state, the counters and how many records ``log.jsonl`` had, so a resumed run ends where an uninterrupted one would.

SIGINT / SIGTERM finish the current step, write ``last.pt`` and stop (`deepmetric.training.interrupts`);
non-finite losses, gradients and weights stop the run before a checkpoint could hold them
(`deepmetric.training.numerics`).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config, load_config, to_yaml
from ..data import collate_batch
from ..errors import ConfigError
from ..integrity import IntegrityError, remove_file_with_hash, remove_stale_tmp
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
from .interrupts import Interrupts, TrainingInterrupted
from .logging import RunLog
from .numerics import NumericGuard
from .optim import build_optimizer
from .resume import resume_changes
from .schedule import LRSchedule
from .selection import Selection

CHECKPOINT_VERSION = 1
# what a run writes into its directory: --overwrite deletes these (and nothing else there)
RUN_OUTPUTS = ("config.yaml", "log.jsonl", "metrics.json", "report.html", "mlflow_run_id", "checkpoints", "report",
               "tensorboard")  # fmt: skip


class RunExistsError(ConfigError, FileExistsError):
    """The run directory already holds a run (neither resume nor overwrite was asked for)."""


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False):  # fmt: skip
        """``resume``: continue the run in ``run_dir`` (its ``config.yaml`` may differ from ``cfg`` only in the keys
        `deepmetric.training.resume.RESUME_SAFE` lists); ``overwrite``: delete the run there first and start anew."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if resume and overwrite:
            raise ConfigError(f"resume and overwrite exclude each other ({self.run_dir}): choose one")
        holds_run = any((self.run_dir / name).exists() for name in ("log.jsonl", "metrics.json", "checkpoints"))
        if not resume and holds_run and not overwrite:
            raise RunExistsError(
                f"run directory {self.run_dir} already holds a run: continue it with --resume {self.run_dir}, start "
                "it again from scratch with --overwrite (deletes its files), or choose another --output"
            )
        changes = self._resume_changes() if resume else []  # before any data is read
        # under torchrun: join the process group; rank 0 alone writes files and shows progress
        device = cfg.train.device
        self.device = distributed.setup(device) if distributed.requested() else resolve_device(device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.log = RunLog(self.run_dir, main=self.main, quiet=quiet)
        if overwrite and holds_run and self.main:
            self._remove_run()
        if resume and self.main:
            stale = remove_stale_tmp(self.run_dir) + remove_stale_tmp(self.ckpt_dir)
            if stale:
                self.log.say(f"removed {len(stale)} temporary file(s) left by an interrupted process")
        if changes:
            self.log.say("resuming with " + ", ".join(f"{k}: {a} → {b}" for k, a, b in changes))
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
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.last_checkpoint: tuple[Path, int] | None = None  # the newest intact last.pt (or last.prev.pt), its step
        self.numerics = NumericGuard(self.device, cfg.train.skip_nonfinite_steps, self.use_amp, self.run_dir,
                                     lambda: self.last_checkpoint)  # fmt: skip
        self.interrupts = Interrupts(self._announce_signal, self._stopped_at_once)
        self._under_way: int | None = None  # the step a deferred signal waits for (None: before the loop)
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
            "baseline": self.baseline, "rng": rng_state(), "log_records": self.log.records,
            "skipped_steps": self.numerics.skipped_steps,
        }  # fmt: skip

    def _resume_changes(self) -> list[tuple[str, object, object]]:
        """The keys in which ``cfg`` differs from the run's ``config.yaml``; a `ConfigError` for one not safe."""
        saved = self.run_dir / "config.yaml"
        return resume_changes(load_config(saved), self.cfg, self.run_dir) if saved.is_file() else []

    def _remove_run(self) -> None:
        """--overwrite: delete what a run wrote into the run directory (`RUN_OUTPUTS`), nothing else there."""
        for name in RUN_OUTPUTS:
            path = self.run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        remove_stale_tmp(self.run_dir)
        self.log.say(f"--overwrite: removed the previous run in {self.run_dir}")

    def _load_last(self) -> tuple[dict, Path] | None:
        """The newest intact checkpoint: ``last.pt``, else (with a warning) ``last.prev.pt``; None when there is
        none; `IntegrityError` when neither is intact."""
        problems = []
        for path in (self.ckpt_dir / "last.pt", self.ckpt_dir / "last.prev.pt"):
            if not path.is_file():
                problems.append(f"{path} missing")
                continue
            try:
                state = load_checkpoint(path)
            except IntegrityError as e:
                problems.append(str(e))
                continue
            if path.name != "last.pt":
                self.log.warn(f"{problems[0]}; resuming from the previous checkpoint {path} (step {state['step']})")
                corrupt = self.ckpt_dir / "last.pt"
                if self.main and corrupt.is_file():  # kept aside: the next checkpoint must not make it last.prev.pt
                    os.replace(corrupt, self.ckpt_dir / "last.corrupt.pt")
                    remove_file_with_hash(corrupt)
            return state, path
        if len(problems) == 2 and all(p.endswith(" missing") for p in problems):
            return None
        raise IntegrityError(
            f"no intact checkpoint to resume {self.run_dir} from: {'; '.join(problems)}; start it again with "
            "--overwrite"
        )

    def _resume(self) -> None:
        loaded = self._load_last()
        if loaded is None:
            self.log.say(f"no checkpoint in {self.ckpt_dir}: starting from the beginning")
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
            save_checkpoint(self._state(), self.ckpt_dir / "last.pt", previous=self.ckpt_dir / "last.prev.pt")
        self.last_checkpoint = (self.ckpt_dir / "last.pt", self.step)

    def _save_best(self, key: str | None, value: float | None) -> None:
        self.numerics.check_on_device()
        self._check_weights()
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

    # --------------------------------------------------------------------------------------------- signals
    def _announce_signal(self, name: str) -> str | None:
        if self.main:
            what = f"step {self._under_way}" if self._under_way else "the baseline evaluation"
            return f"deepmetric: {name}: finishing {what}, then writing a checkpoint (send it again to stop at once)"
        return None

    def _stopped_at_once(self, name: str) -> str:
        saved = self.last_checkpoint
        if saved and saved[1] == self.step:
            state = f"with the checkpoint of step {self.step} ({saved[0]})"
        elif saved:
            state = f"without a checkpoint of step {self.step} (the last is of step {saved[1]}: {saved[0]})"
        else:
            state = "before the first checkpoint"
        return f"{name}: stopped at once, {state}; continue with: deepmetric train --resume {self.run_dir}"

    def _stop_if_signalled(self) -> None:
        """At a step's end: after a signal, write the checkpoint and stop. Under torchrun the ranks agree at log steps
        (rank 0's signal counts; the host waits there anyway), so all stop after the same step."""
        interrupts = self.interrupts
        signum = interrupts.pending
        if self.world_size > 1:
            if self.step % self.cfg.train.log_every:
                return
            signum = interrupts.pending = distributed.broadcast_object(interrupts.pending if self.main else None)
        if signum is None:
            return
        interrupts.deferring = False  # a second signal while saving stops at once
        if self.last_checkpoint is None or self.last_checkpoint[1] != self.step:
            self.save_last()
        path = self.last_checkpoint[0]
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: stopped after step {self.step} with a checkpoint "
            f"({path}); continue with: deepmetric train --resume {self.run_dir}",
            signum,
        )

    def fit(self) -> dict:
        """Train (or continue), evaluate the best checkpoint on test, write metrics.json and the report."""
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", to_yaml(cfg))
        try:
            with self.interrupts.installed():
                self.interrupts.deferring = True
                self.log.start_tracking(cfg, resumed=self.step > 0)
                if self.step == 0 and cfg.train.baseline and self.baseline is None:
                    self.baseline = score_baseline(self)
                self.log.open(self.total_steps, self.step)
                try:
                    self._stop_if_signalled()
                    self._loop()
                finally:
                    self.log.close_progress()
                self.interrupts.deferring = False  # training is done and saved: a signal now stops at once
                return self.finish()
        finally:
            self.log.close()

    def _loop(self) -> None:
        cfg = self.cfg
        self.context.step = self.step
        self.method.on_train_start(self.context)
        self._under_way = self.step + 1
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
                self._stop_if_signalled()
                self._under_way = self.step + 1  # until now, a signal still waited for this step's checkpoint
                if stop or self.step >= self.total_steps or end_of_epoch:
                    break

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
        if self.numerics.skipped_steps:
            metrics["skipped_steps"] = self.numerics.skipped_steps
        if self.bad_images:
            metrics["skipped_images"] = {"count": len(self.bad_images), "paths": sorted(set(self.bad_images))}
        if self.main:
            write_json(self.run_dir / "metrics.json", metrics)
            if self.cfg.report.enabled:
                from ..report import write_report

                write_report(self.run_dir, run=self, test_embedded=test_embedded)
            self.log.finish_tracking(metrics)
        distributed.barrier()
        return metrics

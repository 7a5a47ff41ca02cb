"""CCP: chance-constrained multi-proxy DML (Gürbüz, Can, Alatan, "Deep Metric Learning with Chance Constraints",
WACV 2024).

Training runs in stages. A stage minimises the paper's per-stage objective (the proximal form of its
chance-constrained problem, as the official code computes it)

    L(θ, P) = w_batch · ℓ(v̂_B, v̂_B) + w_proxy · ℓ(v̂_B, P̂) + λ/2 · ‖θ − θ̄‖²

with ℓ any pair loss used in proxy form (samples are anchors, all C·K proxies the reference set, the K proxies of a
sample's class its positives), v̂ = v / max(1, ‖v‖) (or plain L2 normalisation), θ the network's weights (proxies
excluded) and θ̄ the previous stage's best weights (λ = 0 in the first stage). After ``stage_patience`` validations
without improvement of the stage metric (``map@r``) a *projection* starts the next stage: θ̄ ← θ_best, and the
proxies are re-initialised to embeddings of real training images chosen by per-class greedy k-center over a pool of
``pool_size`` random images per class (training augmentation, model in eval mode, raw embeddings), seeded with the
stage's best proxies so the new ones land far from them (the paper's k-center re-initialisation). The run itself
ends by the trainer's early stopping (``train.early_stopping_patience``, 60 in the paper) and restores the best
weights.

Quirks of the official code are switches: ``restore_best_on_projection`` (False, as the code: training goes
on from the current weights), ``reset_proxy_optimizer_state`` (False, as the code), ``proxy_weight_decay`` (True, as
the code), ``proxy_lr_mult`` (1, as the code), ``lagged_stage_metric`` (False: the code's one-evaluation lag is a bug
and off by default). The stage state, θ̄, θ_best and the best proxies are buffers, so resuming mid-stage is exact.

Composition (docs/combining.md): a ``miner`` (e.g. EPS's ``easy_positive``) chooses the pairs of both terms — in the
batch, and against the proxies (EPS: each sample's nearest proxy of its class is its one positive); a ``memory``
(XBM) extends the in-batch term's references with a queue of past (normalised) batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..distributed import gather, gather_for_loss
from ..losses import CrossBatchMemory, mined_loss, pair_loss
from ..losses.memory import takes_reference_set
from ..models import Embedder
from ..precision import full_precision
from ..registry import METHODS, build_loss, resolve
from .base import Method, MethodContext
from .ccp_components import ProximalTerm, ProxyBank, kcenter_per_class, lipschitz_normalize
from .pairs import build_memory, build_pair_miner, check_pair_config, no_miner

NORMALIZATIONS = {"lipschitz": lipschitz_normalize, "l2": lambda v: F.normalize(v, dim=-1)}


def pool_indices(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """C × ``per_class`` dataset positions: per class a random draw without replacement, reshuffled and continued
    when the class has fewer images (the candidate pool of the k-center step)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(num_classes + 1))
    out = np.empty((num_classes, per_class), dtype=np.int64)
    for c in range(num_classes):
        members = order[starts[c] : starts[c + 1]]
        if len(members) == 0:
            raise ValueError(f"training class {c} has no images; the candidate pool needs every class")
        rounds = math.ceil(per_class / len(members))
        out[c] = np.concatenate([rng.permutation(members) for _ in range(rounds)])[:per_class]
    return out


@dataclass
class CCPOptions:
    """``method.options`` of CCP (the paper's symbols in brackets; defaults as its official code)."""

    proxies_per_class: int = 8  # [K]
    pool_size: int = 12  # candidates per class for k-center, as a multiple rule of the official code [b]
    lam: float = 2e-4  # proximal weight [λ]
    batch_weight: float = 0.1  # weight of the in-batch pair loss
    proxy_weight: float = 1.0  # weight of the sample-to-proxy loss
    stage_patience: int = 3  # validations without improvement that end a stage
    min_improvement: float = 1e-5
    normalization: str = "lipschitz"  # lipschitz (v / max(1, ‖v‖)) | l2
    stage_metric: str | None = None  # None: train.select_metric
    restore_best_on_projection: bool = False
    reset_proxy_optimizer_state: bool = False
    proxy_weight_decay: bool = True
    proxy_lr_mult: float = 1.0
    lagged_stage_metric: bool = False

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r} is not one of {sorted(NORMALIZATIONS)}")
        sizes = ("proxies_per_class", "pool_size", "stage_patience")
        small = {k: getattr(self, k) for k in sizes if getattr(self, k) < 1}
        if small:
            raise ValueError(f"{small}: proxies_per_class, pool_size and stage_patience must be ≥ 1")


@METHODS.register("ccp")
class CCPMethod(Method):
    Options = CCPOptions
    normalize_embeddings = False  # ranked on v / max(1, ‖v‖) (or L2-normalised by the method itself)

    def __init__(
        self,
        model: Embedder,
        num_classes: int,
        loss: nn.Module,
        *,
        proxies_per_class: int = 8,
        pool_size: int = 12,
        lam: float = 2e-4,
        batch_weight: float = 0.1,
        proxy_weight: float = 1.0,
        stage_patience: int = 3,
        min_improvement: float = 1e-5,
        normalization: str = "lipschitz",
        stage_metric: str | None = None,
        restore_best_on_projection: bool = False,
        reset_proxy_optimizer_state: bool = False,
        proxy_weight_decay: bool = True,
        proxy_lr_mult: float = 1.0,
        lagged_stage_metric: bool = False,
        seed: int = 0,
        miner: nn.Module | None = None,
        memory: CrossBatchMemory | None = None,
    ):
        super().__init__(model)
        if len(model.heads) != 1:
            raise ValueError(f"CCP uses one embedding head, the model has {list(model.heads)}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        if proxies_per_class < 1 or pool_size < 1 or stage_patience < 1:
            raise ValueError("proxies_per_class, pool_size and stage_patience must be ≥ 1")
        self.head = next(iter(model.heads))
        model.normalize = {self.head: False}  # the method normalises (Lipschitz or L2), in training and at test time
        self.loss, self.num_classes = loss, num_classes
        self.miner, self.memory = miner, memory
        self.per_class, self.pool_size, self.seed = proxies_per_class, pool_size, seed
        self.batch_weight, self.proxy_weight = batch_weight, proxy_weight
        self.stage_patience, self.min_improvement, self.stage_metric = stage_patience, min_improvement, stage_metric
        self.normalization = normalization
        self.restore_best_on_projection = restore_best_on_projection
        self.reset_proxy_optimizer_state = reset_proxy_optimizer_state
        self.proxy_weight_decay, self.proxy_lr_mult = proxy_weight_decay, proxy_lr_mult
        self.lagged_stage_metric = lagged_stage_metric
        self.bank = ProxyBank(num_classes, proxies_per_class, model.dims[self.head])
        network = [p for p in model.parameters() if p.requires_grad]
        self.proximal = ProximalTerm(network, lam)
        self.best_weights = nn.ParameterList([nn.Parameter(p.detach().clone(), requires_grad=False) for p in network])
        self.register_buffer("best_proxies", torch.zeros_like(self.bank.proxies))
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self.register_buffer("stage_best", torch.tensor(float("-inf"), dtype=torch.float64))
        self.register_buffer("stage_bad", torch.zeros((), dtype=torch.long))
        self.register_buffer("previous_value", torch.tensor(float("-inf"), dtype=torch.float64))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @classmethod
    def check_config(cls, cfg, options: CCPOptions) -> None:
        """The loss is used in proxy form, so it must take a reference set; a miner and a memory as for any pair
        loss."""
        check_pair_config(cfg)
        loss = resolve("loss", cfg.loss.name)
        if not takes_reference_set(loss):
            raise ValueError(f"loss.name={cfg.loss.name!r} ({loss.__name__}): method 'ccp' uses its loss in proxy form "
                             "(samples against every proxy as references), which needs a pair-based loss: ccp_c1, "
                             "ccp_c2, ccp_ms, ccp_triplet or a PML pair loss")  # fmt: skip

    @classmethod
    def from_config(cls, cfg, options: CCPOptions, model: Embedder, num_classes: int) -> CCPMethod:
        dim = model.dims["embedding"]
        loss = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes, embedding_size=dim)
        miner = (  # without miner.name its params are ignored, as before CCP took a miner
            None
            if no_miner(cfg.miner.name)
            else build_pair_miner(cfg.miner.name, cfg.miner.params, cfg.data.samples_per_class)
        )
        return cls(model, num_classes, loss, seed=cfg.train.seed, miner=miner, memory=build_memory(cfg.memory, dim),
                   **asdict(options))  # fmt: skip

    # ------------------------------------------------------------------------------------------ training
    def normalize(self, v: torch.Tensor) -> torch.Tensor:
        return NORMALIZATIONS[self.normalization](v)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        raw = gather_for_loss(full_precision(self.model(batch["views"][0])[self.head]))  # global batch under torchrun
        labels = gather(batch["label"])
        with torch.autocast(raw.device.type, enabled=False):
            v = self.normalize(raw)
            proxies, proxy_labels = self.bank.flat()
            batch_loss, memory_parts = pair_loss(self.loss, self.miner, v, labels, self.memory)
            proxy_loss = mined_loss(self.loss, self.miner, v, labels, self.normalize(proxies), proxy_labels)
            proximal = self.proximal()
            loss = self.batch_weight * batch_loss + self.proxy_weight * proxy_loss + proximal
        parts = {"batch_loss": batch_loss.detach(), "proxy_loss": proxy_loss.detach(), "proximal": proximal.detach()}
        if "memory" in memory_parts:
            parts["memory_loss"] = memory_parts["memory"]
        return {"loss": loss, **parts}

    def on_step_end(self, step: int) -> None:
        if self.memory is not None:
            self.memory.step_end(step)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.model(images)[self.head])

    def extra_parameters(self):
        options = {"lr_mult": self.proxy_lr_mult, **({} if self.proxy_weight_decay else {"weight_decay": 0.0})}
        groups = [("proxies", [self.bank.proxies], options)]
        loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        return groups + ([("loss", loss_params, {})] if loss_params else [])

    # ------------------------------------------------------------------------------------ stage control
    def on_train_start(self, ctx: MethodContext) -> None:
        """Stage 0: proxies from k-center seeded with the origin (the largest-norm candidate first)."""
        if not bool(self.initialised):
            self.bank.reinitialise(self.select_proxies(ctx, seeds=None))
            self.best_proxies.copy_(self.bank.proxies.detach())
            self.initialised.fill_(True)

    def on_validation_end(self, metrics: dict, ctx: MethodContext) -> None:
        key = self.stage_metric or ctx.select_key(metrics)
        if key not in metrics:
            raise KeyError(f"CCP stage_metric {key!r} is not among the validation metrics {sorted(metrics)}")
        value = float(metrics[key])
        if self.lagged_stage_metric:  # the official code's stale read: decide on the previous value
            current = value
            value = float(self.previous_value)
            self.previous_value.fill_(current)
        if value > float(self.stage_best) + self.min_improvement:
            self.stage_best.fill_(value)
            self.stage_bad.zero_()
            with torch.no_grad():
                for best, p in zip(self.best_weights, self.proximal.params, strict=True):
                    best.copy_(p)
                self.best_proxies.copy_(self.bank.proxies)
        else:
            self.stage_bad += 1
        if int(self.stage_bad) >= self.stage_patience:
            self.project(ctx)

    @torch.no_grad()
    def project(self, ctx: MethodContext) -> None:
        """End the stage: θ̄ ← θ_best, proxies ← k-center picks seeded with the best proxies; a new stage begins."""
        self.stage += 1
        self.proximal.anchor(list(self.best_weights))
        if self.restore_best_on_projection:
            for p, best in zip(self.proximal.params, self.best_weights, strict=True):
                p.copy_(best)
        self.bank.reinitialise(self.select_proxies(ctx, seeds=self.best_proxies))
        if self.reset_proxy_optimizer_state:
            ctx.optimizer.state.pop(self.bank.proxies, None)
        self.stage_best.fill_(float("-inf"))
        self.stage_bad.zero_()
        stage = int(self.stage)
        text = f"step {ctx.step}: CCP stage {stage} begins (proxies re-initialised by k-center)"
        ctx.record({"type": "ccp_stage", "step": ctx.step, "stage": stage}, text)

    @torch.no_grad()
    def select_proxies(self, ctx: MethodContext, seeds: torch.Tensor | None) -> torch.Tensor:
        """C × K × D raw embeddings of real training images: k-center over the candidate pool.
        Under torchrun every rank ends with rank 0's selection."""
        b, k = self.pool_size, self.per_class
        per_class = k if b == 1 else (b * k if b < k else b)  # the official edge cases
        pool = self.candidate_pool(ctx, per_class)
        picks = pool if b == 1 else kcenter_per_class(pool, k, seeds)[0]  # b = 1: K random images per class
        return distributed.broadcast_(picks.contiguous())

    @torch.no_grad()
    def candidate_pool(self, ctx: MethodContext, per_class: int) -> torch.Tensor:
        """C × per_class × D raw embeddings of random training images, training augmentation, model in eval mode:
        draw, embed, (the caller runs) k-center. Seeded by (seed, stage), so a resumed run draws the same pool; under
        torchrun the run's ``embed_training`` shares the work and every process gets the whole pool."""
        seed = self.seed * 7919 + int(self.stage)
        positions = pool_indices(ctx.train_labels, self.num_classes, per_class, seed).reshape(-1)
        was_training = self.model.training
        self.model.eval()
        try:
            embeddings = ctx.embed_training(positions, lambda images: full_precision(self.model(images)[self.head]),
                                            seed=seed)  # fmt: skip
        finally:
            self.model.train(was_training)
        if len(embeddings) != len(positions):
            raise RuntimeError("the candidate pool lost images (on_bad_image=skip); CCP needs every drawn image")
        return embeddings.view(self.num_classes, per_class, -1).to(self.bank.proxies.device)

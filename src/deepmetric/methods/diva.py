"""DiVA: diverse visual feature aggregation (Milbich, Roth, Bharadhwaj, Sinha, Bengio, Ommer, Cohen; ECCV 2020).

Four 128-d heads on one backbone, each trained on its own task (the full objective as the authors' `diva_main.py`
computes it; docs/diva.md):

    L = L_margin(disc; distance-weighted) + α_ssl · L_DaNCE(ssl(view A), EMA-ssl(view B), queue)
      + α_shared · L_margin(shared; label-permutation miner) + α_intra · L_margin(intra; intra-class triplets)
      + L_decorrelation({heads})                                     (ρ per explicit (source, target) pair)

Each margin task has its own per-class β (own optimizer group, lr × ``beta_lr_mult``, no weight decay); the
decorrelation regressors have theirs (lr × ``regressor_lr_mult``, no weight decay). The key encoder is an EMA copy of
the whole model (parameters only, momentum 0.9, kept in eval mode) and the queue a FIFO buffer of its
``selfsimilarity`` keys; both are in the state dict, so resume is exact. The queue fills from the first step
(the reference prefills it with 30 batches before training) and DaNCE uses the filled part.

Test time: ``normalize(concat(w_h · f_h))`` over the L2-normalised heads (the weighted sum of per-head squared
distances), with ``test_weights`` (default all 1).

Composition (docs/combining.md), per margin task in ``method.options.<task>``: ``discriminative.miner`` replaces the
distance-weighted miner (e.g. EPS's ``easy_positive``, whose pairs become triplets), and ``<task>.memory`` gives the
task a cross-batch memory (XBM) of its own head's past embeddings, in the state dict like the DaNCE queue.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..config import MemoryConfig, check_memory
from ..distributed import gather, gather_for_loss
from ..losses import AdversarialDecorrelation, DaNCELoss, DivaMarginLoss, pair_loss
from ..miners import DistanceWeightedTripletMiner, IntraClassTripletMiner, SharedTripletMiner
from ..models import Embedder
from ..precision import full_precision
from ..registry import METHODS, resolve
from .base import Method
from .pairs import build_memory, build_pair_miner, no_miner

HEADS = ("discriminative", "selfsimilarity", "shared", "intra")
TASKS = ("discriminative", "shared", "intra")  # the margin tasks (the self-similarity task is DaNCE's)
DEFAULT_PAIRS = (("selfsimilarity", "discriminative"), ("shared", "discriminative"), ("intra", "discriminative"))


@dataclass
class TaskOptions:
    """``method.options.<task>`` of a margin task: its miner (the discriminative task's only: the class-shared and
    intra-class miners define their tasks) and its cross-batch memory."""

    miner: str | None = None  # None: DiVA's own (distance-weighted); e.g. easy_positive (EPS)
    miner_params: dict[str, Any] = field(default_factory=dict)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self):
        if self.miner_params and no_miner(self.miner):
            raise ValueError(f"miner_params {dict(self.miner_params)} given without a miner")
        if not no_miner(self.miner):
            resolve("miner", self.miner)  # an unknown name: the closest valid ones


@dataclass
class DivaOptions:
    """``method.options`` of DiVA (the paper's symbols in brackets)."""

    alpha_ssl: float = 0.3  # weight of the DaNCE task [α_ssl]
    alpha_shared: float = 0.3  # weight of the class-shared task [α_shared]
    alpha_intra: float = 0.3  # weight of the intra-class task [α_intra]
    decorrelation: list[list[Any]] | None = None  # [[source, target, ρ], ...]; None: each auxiliary head → disc.
    rho: float = 1500.0  # decorrelation strength of the default pairs [ρ]
    queue_size: int = 3360  # DaNCE memory of past keys
    momentum: float = 0.9  # EMA of the key encoder
    temperature: float = 0.01  # DaNCE softmax temperature [τ]
    weighting: str = "fixed"  # DaNCE negative weighting: fixed | legacy | none (plain MoCo)
    sharing: str = "random"  # class-shared miner's label permutation
    margin: float = 0.2  # margin loss [α]
    beta: float = 1.2  # initial per-class boundary [β]
    beta_lr_mult: float = 50.0
    regressor_lr_mult: float = 1.0
    decorrelation_hidden: int = 512
    test_weights: dict[str, float] = field(default_factory=dict)  # per-head weights of the test-time embedding
    discriminative: TaskOptions = field(default_factory=TaskOptions)  # its miner, its memory
    shared: TaskOptions = field(default_factory=TaskOptions)  # its memory
    intra: TaskOptions = field(default_factory=TaskOptions)  # its memory

    def __post_init__(self):
        from ..losses.dance import WEIGHTINGS

        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r} is not one of {list(WEIGHTINGS)}")
        unknown = set(self.test_weights) - set(HEADS)
        if unknown:
            raise ValueError(f"test_weights name unknown head(s) {sorted(unknown)}; heads are {list(HEADS)}")
        for pair in self.decorrelation or []:
            if len(pair) != 3 or pair[0] not in HEADS or pair[1] not in HEADS:
                raise ValueError(f"decorrelation entries are [source head, target head, rho], got {list(pair)}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size={self.queue_size} must be ≥ 1")
        for task in ("shared", "intra"):
            if not no_miner(getattr(self, task).miner):
                raise ValueError(
                    f"{task}.miner={getattr(self, task).miner!r}: the {task} task's miner is what defines the task "
                    "(class-shared: permuted labels; intra-class: triplets inside one class); only the "
                    "discriminative task's miner can be replaced (method.options.discriminative.miner)"
                )


@METHODS.register("diva")
class DivaMethod(Method):
    Options = DivaOptions
    num_views = 2

    def __init__(
        self,
        model: Embedder,
        num_classes: int,
        *,
        alpha_ssl: float = 0.3,
        alpha_shared: float = 0.3,
        alpha_intra: float = 0.3,
        decorrelation: list | None = None,
        rho: float = 1500.0,
        queue_size: int = 3360,
        momentum: float = 0.9,
        temperature: float = 0.01,
        weighting: str = "fixed",
        sharing: str = "random",
        margin: float = 0.2,
        beta: float = 1.2,
        beta_lr_mult: float = 50.0,
        regressor_lr_mult: float = 1.0,
        decorrelation_hidden: int = 512,
        test_weights: dict[str, float] | None = None,
        discriminative: TaskOptions | None = None,
        shared: TaskOptions | None = None,
        intra: TaskOptions | None = None,
        samples_per_class: int | None = None,
    ):
        super().__init__(model)
        missing = [h for h in HEADS if h not in model.heads]
        if missing:
            raise ValueError(f"DiVA needs the heads {list(HEADS)}; the model lacks {missing}")
        dim = model.dims["selfsimilarity"]
        self.alphas = {"selfsimilarity": alpha_ssl, "shared": alpha_shared, "intra": alpha_intra}
        self.margins = torch.nn.ModuleDict(
            {h: DivaMarginLoss(num_classes, margin=margin, beta=beta) for h in ("discriminative", "shared", "intra")}
        )
        tasks = {"discriminative": discriminative, "shared": shared, "intra": intra}
        tasks = {t: o if o is not None else TaskOptions() for t, o in tasks.items()}
        replaced = [t for t in ("shared", "intra") if not no_miner(tasks[t].miner)]
        if replaced:
            raise ValueError(f"only the discriminative task's miner can be replaced, not that of {replaced}")
        chosen = tasks["discriminative"]
        discriminative_miner = (
            DistanceWeightedTripletMiner()
            if no_miner(chosen.miner)
            else build_pair_miner(
                chosen.miner, chosen.miner_params, samples_per_class, "method.options.discriminative.miner"
            )
        )
        self.miners = {"discriminative": discriminative_miner, "shared": SharedTripletMiner(sharing),
                       "intra": IntraClassTripletMiner()}  # fmt: skip
        # a cross-batch memory per task that asks for one (none: no state-dict keys, as before)
        self.memories = torch.nn.ModuleDict(
            {t: m for t, o in tasks.items() if (m := build_memory(o.memory, model.dims[t])) is not None}
        )
        pairs = decorrelation if decorrelation is not None else [(s, t, rho) for s, t in DEFAULT_PAIRS]
        self.decorrelation = AdversarialDecorrelation(pairs, dim=dim, hidden=decorrelation_hidden)
        self.dance = DaNCELoss(temperature=temperature, weighting=weighting)
        self.key_model = copy.deepcopy(model).eval()
        for p in self.key_model.parameters():
            p.requires_grad_(False)
        self.momentum = momentum
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # a host copy of queue_filled: no device sync in the training step
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_filled())
        self.beta_lr_mult, self.regressor_lr_mult = beta_lr_mult, regressor_lr_mult
        weights = {h: 1.0 for h in HEADS} | dict(test_weights or {})
        unknown = set(weights) - set(HEADS)
        if unknown:
            raise ValueError(f"test_weights name unknown head(s) {sorted(unknown)}; heads are {list(HEADS)}")
        self.test_weights = weights
        self._keys = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.key_model.eval()  # the key encoder never leaves eval mode (as the reference)
        return self

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        view_a, view_b = batch["views"][0], batch["views"][1]
        labels = gather(batch["label"])  # the global batch under torchrun (identity in one process)
        out = {h: gather_for_loss(full_precision(e)) for h, e in self.model(view_a).items()}
        with torch.no_grad():
            self._keys = gather(full_precision(self.key_model(view_b)["selfsimilarity"]))
        parts = {}
        for head in TASKS:
            memory = self.memories[head] if head in self.memories else None  # noqa: SIM401 (ModuleDict has no get)
            parts[head], extra = pair_loss(self.margins[head], self.miners[head], out[head], labels, memory)
            if "memory" in extra:
                parts[f"{head}_memory"] = extra["memory"]
        filled = self._filled
        parts["dance"] = (
            self.dance(out["selfsimilarity"], self._keys, self.queue[-filled:])
            if filled
            else out["selfsimilarity"].sum() * 0
        )
        parts["decorrelation"], _ = self.decorrelation(out)
        total = (
            parts["discriminative"]
            + self.alphas["selfsimilarity"] * parts["dance"]
            + self.alphas["shared"] * parts["shared"]
            + self.alphas["intra"] * parts["intra"]
            + parts["decorrelation"]
        )
        return {"loss": total, **parts}

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA of the key encoder's parameters (not buffers), the FIFO queue update, the tasks' memories."""
        for memory in self.memories.values():
            memory.step_end(step)
        for k, q in zip(self.key_model.parameters(), self.model.parameters(), strict=True):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)
        if self._keys is not None:
            keys = F.normalize(self._keys, dim=1)[-len(self.queue) :]
            self.queue.copy_(torch.cat([self.queue[len(keys) :], keys]))
            self._filled = min(self._filled + len(keys), len(self.queue))
            self.queue_filled.fill_(self._filled)
            self._keys = None

    def _sync_filled(self) -> None:
        """After loading a state dict (resume): the host copy from the restored buffer (one sync, not per step)."""
        self._filled = int(self.queue_filled)

    def extra_parameters(self):
        betas = [m.beta for m in self.margins.values() if m.beta.requires_grad]
        return [
            ("beta", betas, {"lr_mult": self.beta_lr_mult, "weight_decay": 0.0}),
            ("decorrelation", list(self.decorrelation.parameters()),
             {"lr_mult": self.regressor_lr_mult, "weight_decay": 0.0}),
        ]  # fmt: skip

    @classmethod
    def heads(cls, options: DivaOptions, embedding_dim: int) -> dict[str, int]:
        """The four task heads, each ``model.embedding_dim`` wide."""
        return dict.fromkeys(HEADS, embedding_dim)

    @classmethod
    def check_config(cls, cfg, options: DivaOptions) -> None:
        """DiVA's memories are per task; each must hold a global batch."""
        if cfg.memory.size:
            raise ValueError(
                f"memory.size={cfg.memory.size}: method 'diva' has a margin loss per task and takes a cross-batch "
                "memory per task: set method.options.discriminative.memory.size (or shared / intra) instead, and "
                "memory.size=0"
            )
        batch = cfg.data.classes_per_batch * cfg.data.samples_per_class
        for task in TASKS:
            check_memory(getattr(options, task).memory, f"method.options.{task}.memory", batch)

    @classmethod
    def from_config(cls, cfg, options: DivaOptions, model: Embedder, num_classes: int) -> DivaMethod:
        kwargs = {f.name: copy.deepcopy(getattr(options, f.name)) for f in fields(options)}
        if kwargs["decorrelation"] is not None:
            kwargs["decorrelation"] = [tuple(p) for p in kwargs["decorrelation"]]
        return cls(model, num_classes, samples_per_class=cfg.data.samples_per_class, **kwargs)

    def test_embedding(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        heads = self.embed_heads(images)
        return self.combine(heads), heads

    def embed_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {h: F.normalize(full_precision(e), dim=1) for h, e in self.model(images).items()}

    def combine(self, heads: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
        """normalize(concat(w_h · f_h)) over the four L2-normalised heads, with ``weights`` (default: the method's
        ``test_weights``)."""
        w = self.test_weights if weights is None else weights
        return F.normalize(torch.cat([w[h] * heads[h] for h in HEADS], dim=1), dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.combine(self.embed_heads(images))

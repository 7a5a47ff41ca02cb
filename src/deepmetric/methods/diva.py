"""DiVA: diverse visual feature aggregation (Milbich, Roth, Bharadhwaj, Sinha, Bengio, Ommer, Cohen; ECCV 2020).

Four 128-d heads on one backbone, each trained on its own task (diva.md §2.8):

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
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..distributed import gather, gather_for_loss
from ..losses import AdversarialDecorrelation, DaNCELoss, DivaMarginLoss
from ..miners import DistanceWeightedTripletMiner, IntraClassTripletMiner, SharedTripletMiner
from ..models import Embedder
from ..precision import full_precision
from ..registry import METHODS
from .base import Method

HEADS = ("discriminative", "selfsimilarity", "shared", "intra")
DEFAULT_PAIRS = (("selfsimilarity", "discriminative"), ("shared", "discriminative"), ("intra", "discriminative"))


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
        self.miners = {"discriminative": DistanceWeightedTripletMiner(), "shared": SharedTripletMiner(sharing),
                       "intra": IntraClassTripletMiner()}  # fmt: skip
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
        for head in ("discriminative", "shared", "intra"):
            triplets = self.miners[head](out[head], labels)
            parts[head] = self.margins[head](out[head], labels, triplets)
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
        """EMA of the key encoder's parameters (not buffers) and the FIFO queue update."""
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
    def from_config(cls, cfg, options: DivaOptions, model: Embedder, num_classes: int) -> DivaMethod:
        kwargs = asdict(options)
        if kwargs["decorrelation"] is not None:
            kwargs["decorrelation"] = [tuple(p) for p in kwargs["decorrelation"]]
        return cls(model, num_classes, **kwargs)

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

"""Embed a split with a method's test-time embedding and score it with the exact evaluation engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import EvalConfig
from ..data import BatchAugment, ImageDataset, collate_batch
from ..evaluation import clustering_metrics, per_class_retrieval_metrics, retrieval_metrics
from ..evaluation.diagnostics import collapse_diagnostics


@dataclass
class Embedded:
    """Test-time embeddings of a split and what they are scored against."""

    embeddings: torch.Tensor  # N × D float32, CPU
    labels: np.ndarray  # fine labels
    coarse_labels: np.ndarray  # −1 where undefined
    indices: np.ndarray  # table indices
    heads: dict[str, torch.Tensor] | None = None  # per-head embeddings of multi-head methods (DiVA)
    trunk: torch.Tensor | None = None  # the backbone's pooled features (N × F), when asked for

    def with_embeddings(self, embeddings: torch.Tensor) -> Embedded:
        """The same items with other embeddings (e.g. the trunk's pooled features), no per-head parts."""
        return Embedded(embeddings, self.labels, self.coarse_labels, self.indices)


@torch.no_grad()
def embed_split(method, dataset: ImageDataset, augment: BatchAugment, device, batch_size: int, workers: int = 0,
                progress: bool = False, positions=None, trunk: bool = False) -> Embedded:  # fmt: skip
    """Embed every item of ``dataset`` (or those at ``positions``) in order, in eval mode (the method's mode is
    restored after). ``trunk``: also keep the backbone's pooled features of the same forward passes."""
    from tqdm.auto import tqdm

    trunk_parts: list[torch.Tensor] = []
    hook = (method.model.backbone.register_forward_hook(lambda m, i, out: trunk_parts.append(out.float().cpu()))
            if trunk else None)  # fmt: skip
    was_training = method.training
    method.eval()
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions)
    batches = [positions[s : s + batch_size].tolist() for s in range(0, len(positions), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_batch, num_workers=workers,
                                         generator=torch.Generator())  # leaves the global RNG untouched  # fmt: skip
    chunks, labels, coarse, indices = [], [], [], []
    per_head: dict[str, list] = {}
    for batch in tqdm(loader, desc="embedding", unit="batch", disable=not progress or None, leave=False):
        images = augment(batch["image"].to(device, non_blocking=True))
        embedding, heads = method.test_embedding(images)  # multi-head methods: each head too, from one forward
        for name, e in heads.items():
            per_head.setdefault(name, []).append(e.float().cpu())
        chunks.append(embedding.float().cpu())
        labels.append(batch["label"].numpy())
        coarse.append(batch["coarse_label"].numpy())
        indices.append(batch["index"].numpy())
    method.train(was_training)
    if hook is not None:
        hook.remove()
    if not chunks:
        raise ValueError("cannot evaluate an empty split")
    heads = {name: torch.cat(parts) for name, parts in per_head.items()} or None
    features = torch.cat(trunk_parts) if trunk_parts else None
    if features is not None and len(features) != sum(len(c) for c in chunks):
        raise RuntimeError("the method ran its backbone more than once per batch: cannot keep its pooled features")
    return Embedded(torch.cat(chunks), np.concatenate(labels), np.concatenate(coarse), np.concatenate(indices), heads,
                    features)  # fmt: skip


def gather_embedded(emb: Embedded) -> Embedded:
    """Every rank's part of a split, concatenated in rank order (= item order for contiguous parts)."""
    from ..distributed import gather_uneven as gather

    def cat(a: np.ndarray) -> np.ndarray:
        return gather(torch.from_numpy(np.ascontiguousarray(a))).numpy()

    heads = {name: gather(e) for name, e in emb.heads.items()} if emb.heads else None
    trunk = gather(emb.trunk) if emb.trunk is not None else None
    return Embedded(gather(emb.embeddings), cat(emb.labels), cat(emb.coarse_labels), cat(emb.indices), heads, trunk)


def score(emb: Embedded, cfg: EvalConfig, *, query_mask=None, gallery_mask=None, superclass: bool = False,
          seed: int = 0, normalize: bool | None = None) -> dict[str, float]:  # fmt: skip
    """Retrieval (+ clustering) metrics, ``fine/`` and ``coarse/`` prefixed under the superclass protocol, and the
    collapse diagnostics (``intra_class_variance``, and ``spread_ratio`` when coarse labels exist). ``normalize``:
    L2-normalise before ranking (default ``cfg.normalize``, itself defaulting to True)."""
    if normalize is None:
        normalize = True if cfg.normalize is None else cfg.normalize
    targets = {"": emb.labels}
    if superclass:
        targets = {"fine/": emb.labels, "coarse/": emb.coarse_labels}
    out: dict[str, float] = {}
    for prefix, labels in targets.items():
        kwargs = dict(ks=tuple(cfg.ks), average=cfg.average, backend=cfg.backend, memory_budget=cfg.memory_budget,
                      normalize=normalize)  # fmt: skip
        if query_mask is not None:
            m = retrieval_metrics(emb.embeddings[query_mask], labels[query_mask], emb.embeddings[gallery_mask],
                                  labels[gallery_mask], **kwargs)  # fmt: skip
        else:
            m = retrieval_metrics(emb.embeddings, labels, **kwargs)
        if cfg.clustering and len(np.unique(labels)) > 1:
            m.update(clustering_metrics(emb.embeddings, labels, seed=seed))
        out.update({prefix + k: v for k, v in m.items()})
    for head, e in (emb.heads or {}).items():  # each head alone (DiVA), beside the combination
        m = retrieval_metrics(e, emb.labels, ks=(1,), metrics=("map@r",), memory_budget=cfg.memory_budget)
        out[f"{head}/recall@1"], out[f"{head}/map@r"] = m["recall@1"], m["map@r"]
    coarse = emb.coarse_labels if (emb.coarse_labels >= 0).all() else None
    out.update(collapse_diagnostics(emb.embeddings, emb.labels, coarse))  # class-collapse diagnostics (EPS)
    return out


def per_class_recall(emb: Embedded, cfg: EvalConfig) -> dict[int, float]:
    """recall@1 of every class (for the report)."""
    per_class = per_class_retrieval_metrics(emb.embeddings, emb.labels, ks=(1,), memory_budget=cfg.memory_budget)
    return {c: v["recall@1"] for c, v in per_class.items()}

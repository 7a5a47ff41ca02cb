"""`EmbeddingIndex`: a searchable collection of L2-normalised embeddings with their ids, saved beside its model.

Kinds: ``flat`` (faiss ``IndexFlatIP``: exact; the default), ``ivf`` (faiss ``IndexIVFFlat``: ``nlist`` k-means
cells, ``nprobe`` searched; for collections above a million), ``hnsw`` (faiss ``IndexHNSWFlat``: graph, ``M``
links, ``ef_search``), and ``torch`` (exact, no faiss needed; the fallback when faiss is absent). Scores are cosine
similarities; distances are the Euclidean distances between the normalised vectors, sqrt(2 − 2·cos).

An index directory holds ``meta.json`` (kind, dimension, parameters, the model it was built with, ids and labels)
and ``index.faiss`` or ``embeddings.npy``. Adding embeddings of another dimension, or of another model, is an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.knn import faiss_available, iter_knn
from ..training.checkpoint import atomic_write_bytes, write_json

KINDS = ("flat", "ivf", "hnsw", "torch")


class EmbeddingIndex:
    def __init__(self, kind: str, dim: int, *, model: dict | None = None, nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 64, ef_construction: int = 80):  # fmt: skip
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        if kind != "torch" and not faiss_available():
            raise ImportError(f"index kind {kind!r} needs faiss: pip install 'deepmetric[faiss]', or use kind='torch'")
        self.kind, self.dim, self.model = kind, int(dim), model or {}
        self.params = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search,
                       "ef_construction": ef_construction}  # fmt: skip
        self.ids: list[str] = []
        self.labels: list | None = None
        self._vectors = torch.empty(0, self.dim)  # torch kind
        self._faiss = None

    # ------------------------------------------------------------------------------------------ building
    def _make_faiss(self, train: np.ndarray):
        import faiss

        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.params["ef_construction"]
            return index
        nlist = self.params["nlist"] or max(1, min(int(4 * math.sqrt(len(train))), len(train) // 39 or 1))
        self.params["nlist"] = nlist
        if len(train) < nlist:
            raise ValueError(
                f"an IVF index with nlist={nlist} needs at least {nlist} vectors to train, got {len(train)}"
            )
        self._quantizer = faiss.IndexFlatIP(self.dim)  # kept referenced: the IVF index does not own it
        index = faiss.IndexIVFFlat(self._quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        return index

    def add(self, embeddings, ids: list[str], labels: list | None = None) -> None:
        """Add N embeddings (normalised here) with their ids (and labels, if the index has labels)."""
        x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings of shape {tuple(x.shape)} do not fit this index of dimension {self.dim}")
        if len(ids) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {len(ids)} ids")
        if labels is not None and len(labels) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        if self.ids and (labels is None) != (self.labels is None):
            raise ValueError(
                "this index " + ("has labels: give labels" if self.labels is not None else "has no labels")
            )
        if not torch.isfinite(x).all():
            raise ValueError("embeddings contain NaN or Inf")
        x = F.normalize(x, dim=1)
        if self.kind == "torch":
            self._vectors = torch.cat([self._vectors, x])
        else:
            data = np.ascontiguousarray(x.numpy())
            if self._faiss is None:
                self._faiss = self._make_faiss(data)
            self._faiss.add(data)
        self.ids += [str(i) for i in ids]
        if labels is not None:
            self.labels = (self.labels or []) + list(labels)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------------------------------- search
    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, positions)``: Q × k cosine similarities (best first) and positions into ``ids``."""
        q = F.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float32).reshape(-1, self.dim), dim=1)
        if not len(self):
            raise ValueError("the index is empty")
        k = min(k, len(self))
        if self.kind == "torch":
            chunks = list(iter_knn(q, self._vectors, k))
            idx = torch.cat([c.indices for c in chunks]).numpy()
            scores = torch.cat([c.scores for c in chunks]).numpy()
            return scores, idx
        if self.kind == "ivf":
            self._faiss.nprobe = self.params["nprobe"]
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = max(self.params["ef_search"], k)
        scores, idx = self._faiss.search(np.ascontiguousarray(q.numpy()), k)
        return scores, idx

    def query(self, queries, k: int = 10) -> list[list[dict]]:
        """Per query, the k nearest ``{"id", "score", "distance"[, "label"]}``."""
        scores, idx = self.search(queries, k)
        out = []
        for srow, irow in zip(scores, idx, strict=True):
            hits = []
            for s, i in zip(srow.tolist(), irow.tolist(), strict=True):
                if i < 0:
                    continue
                hit = {"id": self.ids[i], "score": s, "distance": math.sqrt(max(0.0, 2 - 2 * s))}
                if self.labels is not None:
                    hit["label"] = self.labels[i]
                hits.append(hit)
            out.append(hits)
        return out

    # ---------------------------------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "torch":
            atomic_write_bytes(folder / "embeddings.npy", lambda f: np.save(f, self._vectors.numpy()))
        elif self._faiss is not None:
            import faiss

            data = faiss.serialize_index(self._faiss)
            atomic_write_bytes(folder / "index.faiss", lambda f: f.write(data.tobytes()))
        write_json(folder / "meta.json", {"kind": self.kind, "dim": self.dim, "count": len(self), "params": self.params,
                                          "model": self.model, "ids": self.ids, "labels": self.labels})  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingIndex:
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"{folder} is not an index directory (no meta.json)")
        meta = json.loads((folder / "meta.json").read_text())
        p = meta["params"]
        index = cls(meta["kind"], meta["dim"], model=meta["model"], nlist=p["nlist"], nprobe=p["nprobe"],
                    hnsw_m=p["hnsw_m"], ef_search=p["ef_search"], ef_construction=p["ef_construction"])  # fmt: skip
        index.ids, index.labels = meta["ids"], meta["labels"]
        if index.kind == "torch":
            index._vectors = torch.from_numpy(np.load(folder / "embeddings.npy"))
        elif (folder / "index.faiss").is_file():
            import faiss

            index._faiss = faiss.deserialize_index(np.frombuffer((folder / "index.faiss").read_bytes(), dtype=np.uint8))
        stored = index._vectors.shape[0] if index.kind == "torch" else (index._faiss.ntotal if index._faiss else 0)
        if stored != len(index.ids):
            raise ValueError(f"{folder}: {stored} stored vectors but {len(index.ids)} ids; the index is corrupt")
        return index

    def check_model(self, model_source: dict) -> None:
        """Refuse to mix embeddings of different models in one index."""
        mine = self.model.get("checkpoint_sha256")
        if mine and model_source.get("checkpoint_sha256") != mine:
            other = model_source.get("checkpoint_sha256", "?")[:12]
            raise ValueError(
                f"this index was built with {self.model.get('run_dir')} ({self.model.get('checkpoint')}, sha256 "
                f"{mine[:12]}…), not with {model_source.get('run_dir')} (sha256 {other}…); "
                "build a new index for another model"
            )

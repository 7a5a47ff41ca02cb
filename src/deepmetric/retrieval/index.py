"""`EmbeddingIndex`: a searchable collection of L2-normalised embeddings with their ids, saved beside its model.

Kinds: ``flat`` (faiss ``IndexFlatIP``: exact; the default), ``ivf`` (faiss ``IndexIVFFlat``: ``nlist`` k-means
cells, ``nprobe`` searched; for collections above a million), ``hnsw`` (faiss ``IndexHNSWFlat``: graph, ``M``
links, ``ef_search``), and ``torch`` (exact, no faiss needed; the fallback when faiss is absent). Scores are cosine
similarities; distances are the Euclidean distances between the normalised vectors, sqrt(2 − 2·cos).

On disk (format 2) an index directory holds generations and a pointer::

    meta.json                 the pointer: format, generation, kind, dim, count, params, model, image root and the
                              sha256 of each file of the generation; replaced atomically (the commit)
    gen-000007/index.faiss    the vectors (embeddings.npy for the torch kind), + index.faiss.sha256
    gen-000007/items.json     ids (image paths relative to the image root), labels and (when given) each item's
                              metadata, + items.json.sha256
    gen-000006/               the previous generation, kept for readers still loading it; older ones are removed

`save` writes a new generation completely (each file fsynced, with its hash), then replaces ``meta.json``: a kill at
any moment leaves the old index or the new one. `load` follows the pointer and checks every file against the hash the
pointer records (`IntegrityError` naming the file). Image paths are stored relative to the image root, and the root
relative to the index directory (with its absolute path as a fallback), so an index works from any working directory
and moves with its images; ``load(root=DIR)`` re-points them to images moved elsewhere. Indexes of the earlier flat
layout (``meta.json`` with the ids, vectors beside it, no hashes) are still read, unchecked, with a warning.
Adding embeddings of another dimension, or of another model, is an error.

Maintenance: `delete` (by id or by filter) and `update` (replace the items whose id exists, add the others) change the
index in memory; `save` commits the change as one new generation. Items may carry metadata (a dict per item: CSV
columns, say); `query(..., where="category == 'shoes'")` returns the true top-k among the items matching a filter
(`filters`): exactly over the matching vectors when they are at most ``EXACT_FILTER_FRACTION`` of the index (or
``EXACT_FILTER_MIN`` items), otherwise with faiss's selector (flat: exact; ivf/hnsw: the index's own approximation,
with nprobe / ef_search widened by N / matching so as many matching candidates are examined as an unfiltered search
examines items, falling back to the exact search over the subset when it finds fewer than k). An index directory
whose ``meta.json`` says ``"backend": "milvus"`` is loaded as a `deepmetric.retrieval.milvus.MilvusIndex`, with the
same interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import keyword
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.files import IMAGE_EXTENSIONS
from ..errors import ConfigError, RunError
from ..evaluation.knn import faiss_available, iter_knn
from ..integrity import IntegrityError, atomic_write_bytes, fsync_dir, remove_stale_tmp, write_with_hash
from .filters import Filter, parse

KINDS = ("flat", "ivf", "hnsw", "torch")
FORMAT = 2
POINTER = "meta.json"
VECTOR_FILES = {"torch": "embeddings.npy", "flat": "index.faiss", "ivf": "index.faiss", "hnsw": "index.faiss"}
ITEMS = "items.json"
_GENERATION = re.compile(r"^gen-(\d{6,})$")
PAUSE_ENV = "DEEPMETRIC_TEST_INDEX_PAUSE"  # tests: "POINT:MARKER" makes `save` touch MARKER and sleep at POINT
REBUILD = "rebuild it with `deepmetric index build`"
RESERVED_FIELDS = ("id", "label")  # filter fields every item has (label: when the index has labels)
EXACT_FILTER_FRACTION = 0.1  # a filter matching at most this share of the items is searched exactly over them ...
EXACT_FILTER_MIN = 10_000  # ... or at most this many items


class IndexWarning(UserWarning):
    """Something about an index the user should know (an old layout read unchecked, fewer hits than asked)."""


class IncompleteResultsWarning(IndexWarning):
    """An approximate index returned fewer than k hits for some query."""


@contextlib.contextmanager
def warnings_to_stderr(prog: str = "deepmetric"):
    """Print `IndexWarning`s raised inside the block as one ``prog: message`` line each on stderr (for the CLI)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, IndexWarning):
                    print(f"{prog}: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _pause(point: str) -> None:
    """Test hook: with ``DEEPMETRIC_TEST_INDEX_PAUSE=POINT:MARKER`` the writer touches MARKER and waits at POINT,
    so that a test can kill it there."""
    spec = os.environ.get(PAUSE_ENV, "")
    name, _, marker = spec.partition(":")
    if name == point:
        Path(marker).write_text(point)
        time.sleep(600)


def _locate(folder: str, stored: str | None, absolute: str | None) -> str | None:
    """A path recorded relative to the index ``folder`` (or absolute), with its absolute path when written as a
    fallback: the first that exists, else the absolute one (what the error messages should name)."""
    if stored is None:
        return absolute
    relative = os.path.normpath(os.path.join(folder, stored))
    return relative if os.path.exists(relative) or absolute is None else absolute


def checked_batch(embeddings, ids, labels, paths: bool, dim: int, has_labels: bool | None,
                  id_type: str | None) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """``(N × dim float tensor, ids)`` of a batch to add, checked for an index of dimension ``dim`` whose items have
    labels or not (``has_labels``; None: either, the index is empty) and ids of ``id_type`` ("path", "name" or None);
    path ids are made absolute. Every backend's ``add`` and ``update`` goes through it."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    if x.dim() != 2 or x.shape[1] != dim:
        raise ConfigError(f"embeddings of shape {tuple(x.shape)} do not fit this index of dimension {dim}: "
                          f"give N × {dim} embeddings of the index's model")  # fmt: skip
    if len(ids) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {len(ids)} ids")
    if labels is not None and len(labels) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if has_labels is not None and (labels is not None) != has_labels:
        raise ValueError("this index " + ("has labels: give labels" if has_labels else "has no labels"))
    if id_type is not None and id_type != ("path" if paths else "name"):
        raise ValueError(f"this index's ids are {'image paths' if id_type == 'path' else 'names'}: add "
                         f"with paths={id_type == 'path'}")  # fmt: skip
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or Inf")
    return x, [os.path.abspath(str(i)) for i in ids] if paths else [str(i) for i in ids]


def check_metadata(metadata: list | None, n: int) -> list[dict] | None:
    """``metadata`` (one dict per item, or None) checked: names usable in filters (identifiers, not keywords, not
    id/label), values str, int, float (finite), bool or None. Returns plain copies without the None values."""
    if metadata is None:
        return None
    if len(metadata) != n:
        raise ValueError(f"{n} ids but {len(metadata)} metadata entries")
    out = []
    for row in metadata:
        if not isinstance(row, dict):
            raise ValueError(f"metadata must be one dict per item, got {type(row).__name__}")
        clean = {}
        for key, value in row.items():
            if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key) or key in RESERVED_FIELDS:
                raise ConfigError(f"metadata field {key!r} cannot be used: names are identifiers (letters, digits, "
                                  "_; not starting with a digit), not Python keywords, not id or label")  # fmt: skip
            if isinstance(value, np.generic):
                value = value.item()
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ConfigError(f"metadata field {key!r}: value {value!r} is a {type(value).__name__}; give a "
                                  "string, number, boolean or None")  # fmt: skip
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"metadata field {key!r}: value {value!r} is not finite")
            if value is not None:  # None: no value (not stored)
                clean[key] = value
        out.append(clean)
    return out


def _relative_to(folder: str, path: str) -> str:
    """``path`` relative to ``folder`` with ``/`` separators, or absolute when it is on another drive."""
    try:
        return os.path.relpath(path, folder).replace(os.sep, "/")
    except ValueError:
        return path


class EmbeddingIndex:
    """Embeddings with ids (opaque names, or image paths: `add` with ``paths=True``) and optional labels."""

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
        self.id_type: str | None = None  # "path" (absolute image paths in memory) or "name"; None while empty
        self._vectors = torch.empty(0, self.dim)  # torch kind
        self._faiss = None
        self.metadata: list[dict] | None = None  # per item, when any item was added with metadata
        self._source: tuple[str, str | None] | None = None  # (index folder, generation) this index was loaded from
        self._legacy = False
        self._masks: dict[str, np.ndarray] = {}  # filter text → matching items (cleared on every change)

    backend = "local"

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

    def _batch(self, embeddings, ids, labels, paths: bool, metadata) -> tuple[torch.Tensor, list[str], list | None]:
        """A batch to add, checked against this index (nothing changes): normalised vectors, ids, metadata."""
        has_labels = None if not self.ids else self.labels is not None
        id_type = self.id_type if self.ids else None
        x, new = checked_batch(embeddings, ids, labels, paths, self.dim, has_labels, id_type)
        twice = sorted({i for i in new if new.count(i) > 1})
        if twice:
            raise ConfigError(f"{len(twice)} ids are given twice (e.g. {twice[0]!r}): an id names one item")
        return F.normalize(x, dim=1), new, check_metadata(metadata, len(new))

    def add(self, embeddings, ids: list[str], labels: list | None = None, *, paths: bool = False,
            metadata: list[dict] | None = None) -> None:  # fmt: skip
        """Add N embeddings (normalised here) with their ids (and labels, if the index has labels; and metadata: one
        dict per item, of strings, numbers, booleans). With ``paths=True`` the ids are image paths: kept absolute in
        memory, saved relative to the index directory. An id already in the index is an error (see `update`)."""
        x, new, metadata = self._batch(embeddings, ids, labels, paths, metadata)
        present = self._positions_of(new)
        if present:
            example = next(iter(present))
            raise ConfigError(f"{len(present)} of the {len(new)} items to add are already indexed (e.g. {example}): "
                              "use update (`deepmetric index update`) to replace them")  # fmt: skip
        self._append(x, new, labels, "path" if paths else "name", metadata)

    def _append(self, x: torch.Tensor, ids: list[str], labels, id_type: str, metadata) -> None:
        if self.kind == "torch":
            self._vectors = torch.cat([self._vectors, x])
        elif len(x):
            data = np.ascontiguousarray(x.numpy())
            if self._faiss is None:
                self._faiss = self._make_faiss(data)
            self._faiss.add(data)
        before = len(self.ids)
        self.ids += ids
        self.id_type = self.id_type or id_type
        if labels is not None:
            self.labels = (self.labels or []) + list(labels)
        if metadata is not None or self.metadata is not None:
            self.metadata = (self.metadata or [{} for _ in range(before)]) + (metadata or [{} for _ in ids])
        self._masks.clear()

    def update(self, embeddings, ids: list[str], labels: list | None = None, *, paths: bool = False,
               metadata: list[dict] | None = None) -> tuple[int, int]:  # fmt: skip
        """Replace the items whose id is already indexed (vector, label, metadata) and add the others; returns
        ``(replaced, added)``. Nothing changes when the batch does not fit the index."""
        x, new, metadata = self._batch(embeddings, ids, labels, paths, metadata)
        present = self._positions_of(new)
        if present:
            self._keep(~np.isin(np.arange(len(self)), list(present.values())))
        self._append(x, new, labels, "path" if paths else "name", metadata)
        return len(present), len(new) - len(present)

    def delete(self, ids: list[str] | None = None, *, where: str | Filter | None = None) -> list[str]:
        """Remove the items with these ids (as `query` reports them, or relative to the image root as stored) or
        those matching ``where``; returns the removed ids. An unknown id is a `ConfigError` and nothing is removed."""
        if (ids is None) == (where is None):
            raise ConfigError("delete: give the ids to delete or a where filter (one of them)")
        if where is not None:
            drop = self.where_mask(where)
        else:
            drop = np.zeros(len(self), dtype=bool)
            drop[self.resolve_ids(ids)] = True
        removed = [i for i, d in zip(self.ids, drop.tolist(), strict=True) if d]
        if removed:
            self._keep(~drop)
        return removed

    def resolve_ids(self, given: list[str]) -> list[int]:
        """The positions of ``given`` ids (as reported, cwd-relative image paths, or as stored); a `ConfigError` names
        the unknown ones."""
        known = {i: n for n, i in enumerate(self.ids)}
        stored = self._relative_ids() if self.id_type == "path" else []
        for n, i in enumerate(stored):
            known.setdefault(i, n)
        positions, unknown = [], []
        for g in dict.fromkeys(str(i) for i in given):
            n = known.get(g, known.get(os.path.abspath(g)) if self.id_type == "path" else None)
            (unknown.append(g) if n is None else positions.append(n))
        if unknown:
            example = (f" (e.g. {self.ids[0]!r}" + (f" or {stored[0]!r}" if stored else "") + ")") if self.ids else ""
            raise ConfigError(f"{len(unknown)} of {len(given)} ids are not in the index: {', '.join(unknown[:5])}"
                              f"{' …' if len(unknown) > 5 else ''}; give ids as search reports them{example}; nothing "
                              "was changed")  # fmt: skip
        return positions

    def _positions_of(self, ids: list[str]) -> dict[str, int]:
        """``{id: position}`` for those of ``ids`` already indexed."""
        known = {i: n for n, i in enumerate(self.ids)}
        return {i: known[i] for i in ids if i in known}

    def _keep(self, keep: np.ndarray) -> None:
        """Keep only the items where ``keep`` is true (the faiss index is refilled with the kept vectors)."""
        keep = np.asarray(keep, dtype=bool)
        if self.kind == "torch":
            self._vectors = self._vectors[torch.from_numpy(keep)]
        elif self._faiss is not None:
            vectors = self._all_vectors()[keep]
            self._faiss.reset()  # ivf keeps its trained cells; hnsw rebuilds its graph
            if len(vectors):
                self._faiss.add(np.ascontiguousarray(vectors))
        self.ids = [i for i, k in zip(self.ids, keep.tolist(), strict=True) if k]
        if self.labels is not None:
            self.labels = [v for v, k in zip(self.labels, keep.tolist(), strict=True) if k]
        if self.metadata is not None:
            self.metadata = [v for v, k in zip(self.metadata, keep.tolist(), strict=True) if k]
        self._masks.clear()

    def _all_vectors(self) -> np.ndarray:
        if self.kind == "torch":
            return self._vectors.numpy()
        if self._faiss is None or not self._faiss.ntotal:
            return np.empty((0, self.dim), dtype=np.float32)
        self._direct_map()
        return self._faiss.reconstruct_n(0, self._faiss.ntotal)

    def _subset_vectors(self, positions: np.ndarray) -> torch.Tensor:
        if self.kind == "torch":
            return self._vectors[torch.from_numpy(positions)]
        self._direct_map()
        return torch.from_numpy(self._faiss.reconstruct_batch(positions.astype(np.int64)))

    def _direct_map(self) -> None:
        """ivf: the id → list position map that reconstructing vectors needs (made once, kept when saved)."""
        if self.kind == "ivf" and self._faiss.direct_map.type == 0:
            self._faiss.make_direct_map()

    # ------------------------------------------------------------------------------------------ filters
    def fields(self) -> list[str]:
        """The field names a ``where`` filter may use: id, label (when the index has labels), the metadata keys."""
        names = {key for row in self.metadata or [] for key in row}
        return ["id", *(["label"] if self.labels is not None else []), *sorted(names)]

    def where_mask(self, where: str | Filter) -> np.ndarray:
        """Which items match the filter (a `ConfigError` for one that does not parse or names an unknown field)."""
        text = where.text if isinstance(where, Filter) else where
        if text not in self._masks:
            parsed = parse(text, self.fields())
            self._masks.clear()
            self._masks[text] = parsed.mask(self._column, len(self))
        return self._masks[text]

    def _column(self, field: str) -> list:
        if field == "id":
            return self.ids
        if field == "label":
            return self.labels
        return [row.get(field) for row in self.metadata or [{}] * len(self)]

    def count(self, where: str | Filter | None = None) -> int:
        """The number of items (matching ``where``, when given)."""
        return len(self) if where is None else int(self.where_mask(where).sum())

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------------------------------- search
    def check_k(self, k) -> int:
        """``k`` if it is an integer in 1…N (N = the number of indexed items), else a `ConfigError` saying so."""
        n = len(self)
        if not n:
            raise ConfigError("the index is empty: add images first (`deepmetric index add INDEX --images DIR`)")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
            raise ConfigError(f"k = {k!r} is out of range for this index of {n} items: give 1 ≤ k ≤ {n}")
        return int(k)

    def search(self, queries, k: int = 10, *, where: str | Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, positions)``: Q × min(k, N) cosine similarities (best first) and positions into ``ids``; a
        position is −1 where an approximate index found fewer neighbours. ``k < 1`` is a `ConfigError`. With
        ``where``, only the matching items (Q × min(k, matching)); see the module doc for how."""
        q = F.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float32).reshape(-1, self.dim), dim=1)
        if not len(self):
            raise ValueError("the index is empty")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k = {k!r} is out of range: give 1 ≤ k ≤ {len(self)} (the number of indexed items)")
        if where is not None:
            return self._search_subset(q, int(k), np.flatnonzero(self.where_mask(where)))
        k = min(int(k), len(self))
        if self.kind == "torch":
            return self._exact(q, self._vectors, k)
        self._set_search_params(k)
        scores, idx = self._faiss.search(np.ascontiguousarray(q.numpy()), k)
        return scores, idx

    def _set_search_params(self, k: int) -> None:
        if self.kind == "ivf":
            self._faiss.nprobe = self.params["nprobe"]
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = max(self.params["ef_search"], k)

    @staticmethod
    def _exact(q: torch.Tensor, vectors: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        chunks = list(iter_knn(q, vectors, k))
        idx = torch.cat([c.indices for c in chunks]).numpy()
        scores = torch.cat([c.scores for c in chunks]).numpy()
        return scores, idx

    def _search_subset(self, q: torch.Tensor, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The top-k among the items at ``positions``: exact over their vectors when they are few (or the kind is
        exact anyway), else faiss with a selector, falling back to exact when it finds fewer than k."""
        k = min(k, len(positions))
        if not k:
            return np.empty((len(q), 0), dtype=np.float32), np.empty((len(q), 0), dtype=np.int64)
        few = len(positions) <= max(EXACT_FILTER_MIN, EXACT_FILTER_FRACTION * len(self))
        if self.kind != "torch" and not few:
            scores, idx = self._selector_search(q, k, positions)
            if (idx >= 0).all():
                return scores, idx
        scores, idx = self._exact(q, self._subset_vectors(positions), k)
        return scores, positions[idx]

    def _selector_search(self, q: torch.Tensor, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        selector = faiss.IDSelectorBatch(positions.astype(np.int64))
        widen = len(self) / len(positions)  # search as many matching candidates as an unfiltered search would
        if self.kind == "ivf":
            nprobe = min(self.params["nlist"], math.ceil(self.params["nprobe"] * widen))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(
                sel=selector, efSearch=math.ceil(max(self.params["ef_search"], k) * widen)
            )
        else:
            params = faiss.SearchParameters(sel=selector)
        # faiss.contrib.torch_utils (imported by pytorch-metric-learning's inference utilities) replaces `search` with
        # one that drops `params`; faiss's own method stays reachable as `search_numpy`
        search = getattr(self._faiss, "search_numpy", self._faiss.search)
        return search(np.ascontiguousarray(q.numpy()), k, params=params)

    def shortfall_advice(self) -> str:
        """How to get all k hits from this kind of index."""
        if self.kind == "ivf":
            return (f"the {self.params['nprobe']} of {self.params['nlist']} ivf cells searched (nprobe) hold fewer "
                    "vectors; search more cells (search --nprobe) or use a flat index")  # fmt: skip
        if self.kind == "hnsw":
            return f"the hnsw search (ef_search={self.params['ef_search']}) stopped early; raise ef_search"
        return "the index holds fewer items"

    def query(self, queries, k: int = 10, *, where: str | Filter | None = None) -> list[list[dict]]:
        """Per query, the k nearest ``{"id", "score", "distance"[, "label"][, "metadata"]}`` (at most N; with
        ``where``, among the items matching that filter). When an approximate index finds fewer than min(k, N), an
        `IncompleteResultsWarning` says so."""
        scores, idx = self.search(queries, k, where=where)
        out = []
        for srow, irow in zip(scores, idx, strict=True):
            hits = []
            for s, i in zip(srow.tolist(), irow.tolist(), strict=True):
                if i < 0:
                    continue
                hit = {"id": self.ids[i], "score": s, "distance": math.sqrt(max(0.0, 2 - 2 * s))}
                if self.labels is not None:
                    hit["label"] = self.labels[i]
                if self.metadata is not None:
                    hit["metadata"] = dict(self.metadata[i])
                hits.append(hit)
            out.append(hits)
        want = min(int(k), self.count(where))
        short = [len(h) for h in out if len(h) < want]
        if short:
            warnings.warn(
                IncompleteResultsWarning(
                    f"the {self.kind} index returned fewer than k = {want} hits for {len(short)} of {len(out)} "
                    f"queries (as few as {min(short)}): {self.shortfall_advice()}"
                ),
                stacklevel=2,
            )
        return out

    # ---------------------------------------------------------------------------------------- save/load
    def _vector_bytes(self) -> bytes | None:
        if self.kind == "torch":
            buf = io.BytesIO()
            np.save(buf, self._vectors.numpy())
            return buf.getvalue()
        if self._faiss is None:
            return None
        import faiss

        return faiss.serialize_index(self._faiss).tobytes()

    def _image_root(self) -> str | None:
        """The image paths' common folder (None: ids are names, or the images are on several drives)."""
        if self.id_type != "path" or not self.ids:
            return None
        try:
            return os.path.commonpath(sorted({os.path.dirname(i) for i in self.ids}))
        except ValueError:
            return None

    def _relative_ids(self) -> list[str]:
        """The ids as saved: image paths relative to their common folder (names, or absolute paths, unchanged)."""
        root = self._image_root()
        if root is None:
            return list(self.ids)
        prefix = root if root.endswith(os.sep) else root + os.sep
        return [i[len(prefix) :].replace(os.sep, "/") for i in self.ids]

    def _stored_ids(self, folder: str) -> tuple[list[str], dict]:
        """The ids as saved, and the pointer's image-root fields (paths: relative to their common folder)."""
        if self.id_type != "path" or not self.ids:
            return list(self.ids), {}
        root = self._image_root()
        if root is None:  # on several drives: absolute ids
            return list(self.ids), {"image_root": None, "image_root_absolute": None}
        return self._relative_ids(), {"image_root": _relative_to(folder, root), "image_root_absolute": root}

    def _check_legacy_paths(self, folder: Path) -> None:
        """Refuse to convert an old-layout index whose cwd-relative image paths do not resolve from here."""
        if not (self._legacy and self.id_type == "path"):
            return
        missing = [i for i in self.ids if not os.path.exists(i)]
        if missing:
            raise ConfigError(
                f"{folder} is an index of the old layout, whose image paths are relative to the directory `index "
                f"build` ran in; {len(missing)} of {len(self.ids)} are not found from {os.getcwd()} (e.g. "
                f"{missing[0]}): run this from that directory, or give --root DIR (the folder the stored paths are "
                f"relative to), or {REBUILD}"
            )

    def save(self, folder: str | Path) -> None:
        """Write a new generation (each file fsynced, with its sha256), then switch ``meta.json`` to it atomically;
        then remove the generations before the previous one. A kill at any moment leaves the old or the new index."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        where = os.path.abspath(folder)
        self._check_legacy_paths(folder)
        with _writer_lock(folder):
            current = _current_generation(folder)
            if self._source is not None and self._source[0] == where and current != self._source[1]:
                raise RunError(
                    f"{folder} changed while this index was loaded (it is now at {current}, loaded at "
                    f"{self._source[1]}): another process wrote it; load it again and retry"
                )
            gen = _new_generation_dir(folder)
            _pause("generation")
            files = {}
            data = self._vector_bytes()
            if data is not None:
                name = VECTOR_FILES[self.kind]
                files[name] = write_with_hash(gen / name, lambda f: f.write(data))
            _pause("vectors")
            ids, roots = self._stored_ids(where)
            record = {"ids": ids, "labels": self.labels}
            if self.metadata is not None:
                record["metadata"] = self.metadata
            items = json.dumps(record).encode()
            files[ITEMS] = write_with_hash(gen / ITEMS, lambda f: f.write(items))
            fsync_dir(gen)
            _pause("items")
            model = dict(self.model)
            if model.get("run_dir"):
                absolute = os.path.abspath(model["run_dir"])
                model["run_dir"], model["run_dir_absolute"] = _relative_to(where, absolute), absolute
            meta = {"format": FORMAT, "generation": gen.name, "kind": self.kind, "dim": self.dim,
                    "count": len(self), "params": self.params, "model": model, "id_type": self.id_type, **roots,
                    "files": files}  # fmt: skip
            text = json.dumps(meta, indent=2).encode()
            atomic_write_bytes(folder / POINTER, lambda f: f.write(text))  # the commit
            _pause("pointer")
            for d in folder.iterdir():
                if _GENERATION.match(d.name) and d.is_dir() and d.name not in (gen.name, current):
                    shutil.rmtree(d, ignore_errors=True)
            if self._legacy:
                for name in set(VECTOR_FILES.values()):
                    (folder / name).unlink(missing_ok=True)
            remove_stale_tmp(folder)
        self._source, self._legacy = (where, gen.name), False

    @classmethod
    def load(cls, folder: str | Path, root: str | Path | None = None) -> EmbeddingIndex:
        """The index in ``folder`` (following ``meta.json`` to its generation, every file checked against its hash:
        `IntegrityError` naming the file). ``root``: the folder that now holds the index's images, when they were
        moved without the index (the image paths are re-pointed there)."""
        folder = Path(folder)
        pointer = folder / POINTER
        if not pointer.is_file():
            raise FileNotFoundError(f"{folder} is not an index directory (no {POINTER})")
        if root is not None and not Path(root).is_dir():
            raise ConfigError(f"--root {root}: no such folder; give the folder that now holds the indexed images")
        try:
            meta = json.loads(pointer.read_bytes())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{pointer} cannot be read ({e}): the index pointer is corrupt; {REBUILD}") from e
        if meta.get("backend") == "milvus":
            from .milvus import MilvusIndex

            return MilvusIndex.load(folder, root=root, meta=meta)
        if "format" not in meta:
            return cls._load_legacy(folder, meta, root)
        if meta["format"] != FORMAT:
            raise ConfigError(f"{pointer}: index format {meta['format']!r} is not known to this deepmetric (it reads "
                              f"format {FORMAT}); upgrade deepmetric or {REBUILD}")  # fmt: skip
        try:
            return cls._load_generation(folder, meta, root)
        except (KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{pointer} is malformed (missing or bad field {e}); {REBUILD}") from e

    @classmethod
    def _load_generation(cls, folder: Path, meta: dict, root) -> EmbeddingIndex:
        pointer = folder / POINTER
        gen_name = meta["generation"]
        if not isinstance(gen_name, str) or not _GENERATION.match(gen_name):
            raise IntegrityError(f"{pointer} names no valid generation ({gen_name!r}); {REBUILD}")
        gen = folder / gen_name
        if not gen.is_dir():
            raise IntegrityError(f"{pointer} points to {gen}, which is missing; {REBUILD}")
        where = os.path.abspath(folder)
        model = dict(meta["model"])
        if model.get("run_dir"):
            model["run_dir"] = _locate(where, model["run_dir"], model.pop("run_dir_absolute", None))
        model.pop("run_dir_absolute", None)
        p = meta["params"]
        index = cls(meta["kind"], meta["dim"], model=model, nlist=p["nlist"], nprobe=p["nprobe"], hnsw_m=p["hnsw_m"],
                    ef_search=p["ef_search"], ef_construction=p["ef_construction"])  # fmt: skip
        files, count = meta["files"], int(meta["count"])
        vector_name = VECTOR_FILES[index.kind]
        unknown = set(files) - {vector_name, ITEMS}
        if unknown or ITEMS not in files:
            raise IntegrityError(f"{pointer} lists unexpected files {sorted(unknown)} or lacks {ITEMS}; {REBUILD}")
        try:
            items = json.loads(_read_checked(gen / ITEMS, files[ITEMS], pointer))
            ids, labels, metadata = items["ids"], items["labels"], items.get("metadata")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{gen / ITEMS} cannot be parsed ({e}); {REBUILD}") from e
        if len(ids) != count or any(v is not None and len(v) != count for v in (labels, metadata)):
            raise IntegrityError(f"{gen / ITEMS} holds {len(ids)} ids for {count} items; {REBUILD}")
        stored = 0
        if vector_name in files:
            data = _read_checked(gen / vector_name, files[vector_name], pointer)
            try:
                if index.kind == "torch":
                    index._vectors = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
                    stored, dim = index._vectors.shape[0], index._vectors.shape[1]
                else:
                    import faiss

                    index._faiss = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                    stored, dim = index._faiss.ntotal, index._faiss.d
            except (ValueError, RuntimeError, IndexError) as e:
                raise IntegrityError(f"{gen / vector_name} cannot be read ({e}); {REBUILD}") from e
            if dim != index.dim:
                raise IntegrityError(f"{gen / vector_name} holds {dim}-d vectors, {pointer} says {index.dim}")
        if stored != count:
            raise IntegrityError(f"{gen}: {stored} stored vectors but {count} items; the index is corrupt; {REBUILD}")
        index.id_type, index.labels, index.metadata = meta.get("id_type"), labels, metadata
        if index.id_type == "path":
            index.ids = index._resolve_paths(folder, ids, meta.get("image_root"), meta.get("image_root_absolute"), root)
        elif root is not None:
            raise ConfigError(f"--root {root}: this index's ids are names, not image paths; drop --root")
        else:
            index.ids = list(ids)
        index._source = (where, gen_name)
        return index

    def _resolve_paths(self, folder: Path, ids: list[str], stored_root, absolute_root, root) -> list[str]:
        """Absolute image paths: ``ids`` under the image root (found from the index folder) or under ``root``."""
        if stored_root is None and absolute_root is None:  # absolute ids (images on several drives)
            if root is not None:
                raise ConfigError(f"--root {root}: this index's images span several drives, so their paths are "
                                  f"stored absolute and cannot be re-pointed; {REBUILD}")  # fmt: skip
            return [os.path.normpath(i) for i in ids]
        base = os.path.abspath(root) if root is not None else _locate(os.path.abspath(folder), stored_root,
                                                                      absolute_root)  # fmt: skip
        paths = [os.path.normpath(os.path.join(base, i)) for i in ids]
        if root is not None and paths:
            sample = paths[:: max(1, len(paths) // 5)][:5]
            if not any(os.path.exists(p) for p in sample):
                raise ConfigError(
                    f"--root {root}: none of the indexed images is there (e.g. {sample[0]}); give the folder that now "
                    f"holds what was {absolute_root} (the index's image root, as in {folder / POINTER})"
                )
        return paths

    @classmethod
    def _load_legacy(cls, folder: Path, meta: dict, root) -> EmbeddingIndex:
        """An index of the flat layout of before (``meta.json`` with ids, vectors beside it, no hashes)."""
        try:
            p = meta["params"]
            index = cls(meta["kind"], meta["dim"], model=meta["model"], nlist=p["nlist"], nprobe=p["nprobe"],
                        hnsw_m=p["hnsw_m"], ef_search=p["ef_search"], ef_construction=p["ef_construction"])  # fmt: skip
            ids, index.labels = list(meta["ids"]), meta["labels"]
        except (KeyError, TypeError) as e:
            raise IntegrityError(f"{folder / POINTER} is not an index pointer (missing {e}); {REBUILD}") from e
        vectors = folder / VECTOR_FILES[index.kind]
        try:
            if index.kind == "torch":
                index._vectors = torch.from_numpy(np.load(vectors, allow_pickle=False))
            elif vectors.is_file():
                import faiss

                index._faiss = faiss.deserialize_index(np.frombuffer(vectors.read_bytes(), dtype=np.uint8))
        except (OSError, ValueError, RuntimeError) as e:
            raise IntegrityError(f"{vectors} cannot be read ({e}); {REBUILD}") from e
        stored = index._vectors.shape[0] if index.kind == "torch" else (index._faiss.ntotal if index._faiss else 0)
        if stored != len(ids):
            raise IntegrityError(f"{folder}: {stored} stored vectors but {len(ids)} ids: corrupt; {REBUILD}")
        if ids and all(Path(i).suffix.lower() in IMAGE_EXTENSIONS for i in ids):  # image paths, relative to a cwd
            base = os.path.abspath(root) if root is not None else os.getcwd()
            index.ids, index.id_type = [os.path.normpath(os.path.join(base, i)) for i in ids], "path"
        elif root is not None:
            raise ConfigError(f"--root {root}: this index's ids are names, not image paths; drop --root")
        else:
            index.ids, index.id_type = ids, ("name" if ids else None)
        index._legacy, index._source = True, (os.path.abspath(folder), None)
        warnings.warn(
            IndexWarning(
                f"{folder} is an index of the old layout (no generations, no hashes; image paths relative to the "
                f"directory `index build` ran in): read unchecked. `deepmetric index add` converts it (run from "
                f"that directory or with --root), or {REBUILD}"
            ),
            stacklevel=3,
        )
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


def _read_checked(path: Path, expected: str, pointer: Path) -> bytes:
    """``path``'s bytes, if their sha256 is the one ``pointer`` records; else `IntegrityError` naming the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"{path} cannot be read ({e}); {REBUILD}") from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"{path} does not match its hash recorded in {pointer} (sha256 {actual[:12]}… instead of "
            f"{str(expected)[:12]}…): the file is corrupt or was changed; restore it or {REBUILD}"
        )
    return data


def _current_generation(folder: Path) -> str | None:
    """The generation ``folder/meta.json`` points to (None: no index, or one of the old flat layout)."""
    try:
        meta = json.loads((folder / POINTER).read_bytes())
        return meta.get("generation") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def _new_generation_dir(folder: Path) -> Path:
    """Create (exclusively) the next ``gen-NNNNNN`` folder, durably."""
    numbers = [int(m.group(1)) for d in folder.iterdir() if (m := _GENERATION.match(d.name))]
    n = max(numbers, default=0) + 1
    while True:
        gen = folder / f"gen-{n:06d}"
        try:
            gen.mkdir()
            break
        except FileExistsError:
            n += 1
    fsync_dir(folder)
    return gen


@contextlib.contextmanager
def _writer_lock(folder: Path):
    """An exclusive lock on ``folder/.lock`` while a generation is written (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

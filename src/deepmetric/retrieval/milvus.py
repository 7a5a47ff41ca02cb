"""`MilvusIndex`: an `EmbeddingIndex` whose vectors live in Milvus (``index build --backend milvus``).

By default the collection is in a Milvus Lite file inside the index directory (``INDEX/milvus.db``); ``--uri
http://host:19530`` puts it on a Milvus server (or cluster) instead, and ``--uri other.db`` in a Milvus Lite file
elsewhere. ``INDEX/meta.json`` records the backend, the URI (or the Lite file, relative to the index), the
collection, the kind and its parameters, the model, the image root and the committed generation, so
`EmbeddingIndex.load(INDEX)` returns this class and search, filters, delete/update and serve work unchanged.

Collection: ``pk`` (INT64 primary key, a row number), ``vector`` (FLOAT_VECTOR, L2-normalised, metric IP: scores are
cosine similarities, distances sqrt(2 − 2·cos)), ``item`` (the id: an image path relative to the image root, or a
name), ``gen`` (the generation that wrote the row), ``until`` (the generation that retired it; 2^62 while alive), and
dynamic fields ``label`` and ``m_<column>`` per metadata column (prefixed so no column can clash). Kinds: flat →
FLAT, ivf → IVF_FLAT (nlist = 2·sqrt(N) of the first batch unless given; nprobe), hnsw → HNSW (M, efConstruction,
ef = max(ef_search, k)).

Atomicity without transactions: ``meta.json`` holds the committed generation C, and every search filters ``gen <= C
and until > C``. A write (`save`, under the index directory's lock) first undoes what a killed writer left (rows with
``gen > C`` deleted, ``until > C`` marks reset), inserts its rows with ``gen = C + 1``, marks the rows it deletes or
replaces ``until = C + 1``, flushes, and then replaces ``meta.json`` atomically: that is the commit. Before it the
change is invisible; a kill at any moment leaves the index as before (and the next writer cleans up). Rows retired
before the previous generation are then purged (the previous generation's view stays whole for readers that loaded it,
as the local index keeps the previous generation's files). One writer at a time: the lock is a file in the index
directory, so writers on several machines must share that directory (or be serialised otherwise).

A Milvus Lite file is opened by one process at a time (`close` releases it); `faiss_params_shim` keeps Milvus Lite's
IVF/HNSW search working after `faiss.contrib.torch_utils` was imported in the process.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import secrets
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, RunError
from ..integrity import IntegrityError, atomic_write_bytes
from .filters import Filter, parse
from .index import POINTER, REBUILD, EmbeddingIndex, _pause, _relative_to, _writer_lock, check_metadata, checked_batch

FORMAT = "milvus-1"
LITE_FILE = "milvus.db"
ALIVE = 2**62
MAX_K = 16384  # Milvus's largest topk
BATCH = 1000  # rows per insert / ids per `in [...]` lookup
INDEX_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}
INSTALL = "pip install 'deepmetric[milvus]'"
KEEPALIVE = {"grpc.keepalive_time_ms": 600_000}  # Milvus Lite: no pings during a long build (see _connect)


_SHIMMED = False


def faiss_params_shim() -> None:
    """Give faiss's ``search`` its ``params`` argument back where `faiss.contrib.torch_utils` (imported with
    pytorch-metric-learning's inference utilities) replaced it by a version without: Milvus Lite's IVF and HNSW
    indexes pass ``params`` (a filter selector) and fail otherwise. NumPy input goes to faiss's own method, with the
    params; torch input to the torch version, as before."""
    global _SHIMMED
    if _SHIMMED or "faiss.contrib.torch_utils" not in sys.modules:
        return
    faiss = sys.modules["faiss"]
    for name in dir(faiss):
        cls = getattr(faiss, name)
        if inspect.isclass(cls) and issubclass(cls, faiss.Index) and "search_numpy" in cls.__dict__:
            cls.search = _search_with_params(cls.__dict__["search"], cls.__dict__["search_numpy"])
    _SHIMMED = True


def _search_with_params(torch_search, numpy_search):
    def search(self, x, k, *, params=None, D=None, I=None):
        if params is not None or isinstance(x, np.ndarray):
            return numpy_search(self, x, k, params=params, D=D, I=I)
        return torch_search(self, x, k, D=D, I=I)

    return search


def _pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise ImportError(f"the Milvus backend needs pymilvus (and milvus-lite for a local file): {INSTALL}") from e
    return pymilvus


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class MilvusIndex:
    """An index in a Milvus collection, with `EmbeddingIndex`'s interface (changes are staged in memory by `add`,
    `update` and `delete`, and written by `save`)."""

    backend = "milvus"

    def __init__(self, kind: str, dim: int, *, folder: str | Path, uri: str | None = None, model: dict | None = None,
                 nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 64,
                 ef_construction: int = 80, collection: str | None = None):  # fmt: skip
        if kind not in INDEX_TYPES:
            raise ConfigError(f"a Milvus index kind must be one of {tuple(INDEX_TYPES)}, got {kind!r}")
        _pymilvus()
        self.kind, self.dim, self.model = kind, int(dim), model or {}
        self.params = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search,
                       "ef_construction": ef_construction}  # fmt: skip
        self.folder = Path(folder)
        self.uri = uri  # None: the Lite file INDEX/milvus.db
        self.collection = collection or f"deepmetric_{secrets.token_hex(6)}"
        self.committed, self.next_row, self._count = 0, 0, 0
        self.id_type: str | None = None
        self.has_labels: bool | None = None
        self.field_names: list[str] = []  # metadata columns
        self.image_root: str | None = None  # absolute; path ids are stored relative to it when below it
        self._client = None
        self._adds: list[tuple[np.ndarray, list[str], list | None, list[dict] | None]] = []
        self._deletes: dict[str, None] = {}
        self._cache: dict[str, list] | None = None

    # ------------------------------------------------------------------------------------------ connection
    @property
    def location(self) -> str:
        """Where the collection lives: the Lite file, or the server URI (for messages)."""
        return self.uri if self.uri and not self._is_lite() else str(self._lite_path())

    def _is_lite(self) -> bool:
        return self.uri is None or not self.uri.startswith(("http://", "https://", "tcp://", "unix:"))

    def _lite_path(self) -> Path:
        return self.folder / LITE_FILE if self.uri is None else Path(self.uri)

    def _connect(self):
        if self._is_lite():
            faiss_params_shim()
        if self._client is not None:
            return self._client
        pymilvus = _pymilvus()
        target = str(self._lite_path().absolute()) if self._is_lite() else self.uri
        if self._is_lite() and not target.endswith(".db"):
            raise ConfigError(f"--uri {self.uri}: a Milvus Lite file must end in .db; or give a server as "
                              "http://host:19530")  # fmt: skip
        quiet = logging.getLogger("milvus_lite")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            # a long index build sends nothing for minutes: gRPC's default 10 s keepalive pings then draw a GOAWAY
            # from Milvus Lite, and pymilvus's retry of create_index fails with "index already exists"
            self._client = pymilvus.MilvusClient(
                uri=target, timeout=20, grpc_options=KEEPALIVE if self._is_lite() else {}
            )
        except Exception as e:
            raise ConfigError(self._unreachable(target, e)) from e
        finally:
            quiet.setLevel(level)
        if self.committed and self._client.has_collection(self.collection):
            self._client.load_collection(self.collection)  # a reopened Lite file or a restarted server: released
        return self._client

    def _unreachable(self, target: str, error: Exception) -> str:
        if not self._is_lite():
            return (f"cannot reach the Milvus server at {target} ({getattr(error, 'message', error)}): start it (e.g. "
                    "`docker compose up` with Milvus's standalone compose file), check the host and port (default "
                    "19530), or drop --uri to use a Milvus Lite file in the index directory")  # fmt: skip
        if _locked(Path(target)):
            return (f"cannot open the Milvus Lite file {target}: another process has it open, and Milvus Lite opens a "
                    "file in one process at a time: stop the other one (e.g. `deepmetric serve` of this index), or "
                    "use a Milvus server (--uri http://host:19530)")  # fmt: skip
        return (
            f"cannot open the Milvus Lite file {target} ({getattr(error, 'message', error)}); is milvus-lite "
            f"installed ({INSTALL})?"
        )

    def close(self) -> None:
        """Disconnect (and, for a Milvus Lite file, stop its in-process server, so that another process may open it)."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):
            self._client.close()
        self._client = None
        if self._is_lite():
            with contextlib.suppress(ImportError):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(str(self._lite_path().absolute()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------------------------------------- ids
    def _stored_id(self, item: str) -> str:
        """An id as stored: an image path relative to the image root (with /) when below it."""
        if self.id_type != "path" or self.image_root is None:
            return item
        try:
            inside = os.path.commonpath([self.image_root, item]) == self.image_root
        except ValueError:
            inside = False
        return os.path.relpath(item, self.image_root).replace(os.sep, "/") if inside else item

    def _full_id(self, stored: str) -> str:
        if self.id_type != "path" or self.image_root is None or os.path.isabs(stored):
            return stored
        return os.path.normpath(os.path.join(self.image_root, stored))

    def _visible(self, generation: int | None = None) -> str:
        c = self.committed if generation is None else generation
        return f"gen <= {c} and until > {c}"

    def _field(self, name: str) -> str:
        return {"id": "item", "label": "label"}.get(name, f"m_{name}")

    def _filter_value(self, field: str, value):
        if field == "id" and isinstance(value, str) and self.id_type == "path":
            return self._stored_id(os.path.abspath(value))
        return value

    def _milvus_filter(self, where: str | Filter | None) -> str:
        visible = self._visible()
        if where is None:
            return visible
        text = where.text if isinstance(where, Filter) else where
        expr = parse(text, self.fields()).milvus(self._field, self._filter_value)
        return f"({visible}) and {expr}"

    def fields(self) -> list[str]:
        """The field names a ``where`` filter may use: id, label (when the index has labels), the metadata keys."""
        return ["id", *(["label"] if self.has_labels else []), *sorted(self.field_names)]

    # ------------------------------------------------------------------------------------- reading rows
    def _rows(self, expr: str, fields: list[str]) -> list[dict]:
        """Every row matching ``expr`` (all of them, in batches)."""
        if not self.committed:
            return []
        client = self._connect()
        log = logging.getLogger("pymilvus")
        level = log.level
        log.setLevel(logging.ERROR)  # the iterator warns about client-side timestamps on Milvus Lite
        try:
            it = client.query_iterator(self.collection, filter=expr, output_fields=fields, batch_size=BATCH)
            rows = []
            while batch := it.next():
                rows += batch
            it.close()
        finally:
            log.setLevel(level)
        return rows

    def _items(self) -> dict[str, list]:
        """The committed items in insertion order: ids (full), labels, metadata (cached until the next write)."""
        if self._cache is None:
            names = ["item", *(["label"] if self.has_labels else []), *(f"m_{f}" for f in self.field_names)]
            rows = sorted(self._rows(self._visible(), names), key=lambda r: r["pk"])
            self._cache = {"ids": [self._full_id(r["item"]) for r in rows],
                           "labels": [r.get("label") for r in rows] if self.has_labels else None,
                           "metadata": [self._metadata(r) for r in rows] if self.field_names else None}  # fmt: skip
        return self._cache

    def _metadata(self, entity: dict) -> dict:
        return {f: entity[f"m_{f}"] for f in self.field_names if entity.get(f"m_{f}") is not None}

    @property
    def ids(self) -> list[str]:
        """The committed ids (image paths: absolute), in insertion order."""
        return self._items()["ids"]

    @property
    def labels(self) -> list | None:
        return self._items()["labels"]

    @property
    def metadata(self) -> list[dict] | None:
        return self._items()["metadata"]

    def __len__(self) -> int:
        return self._count

    def count(self, where: str | Filter | None = None) -> int:
        """The number of committed items (matching ``where``, when given)."""
        if where is None:
            return len(self)
        expr = self._milvus_filter(where)
        if not self.committed:
            return 0
        result = self._connect().query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def _present(self, stored_ids: list[str]) -> dict[str, int]:
        """``{stored id: pk}`` of the committed rows with these ids."""
        if not stored_ids or not self.committed:
            return {}
        client = self._connect()
        found = {}
        for start in range(0, len(stored_ids), BATCH):
            chunk = ", ".join(_quote(i) for i in stored_ids[start : start + BATCH])
            for r in client.query(self.collection, filter=f"({self._visible()}) and item in [{chunk}]",
                                  output_fields=["item"]):  # fmt: skip
                found[r["item"]] = r["pk"]
        return found

    # -------------------------------------------------------------------------------------------- search
    def check_k(self, k) -> int:
        """``k`` if it is an integer in 1…min(N, 16384), else a `ConfigError` saying so."""
        n = len(self)
        if not n:
            raise ConfigError("the index is empty: add images first (`deepmetric index add INDEX --images DIR`)")
        top = min(n, MAX_K)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= top:
            raise ConfigError(f"k = {k!r} is out of range for this Milvus index of {n} items: give 1 ≤ k ≤ {top}")
        return int(k)

    def shortfall_advice(self) -> str:
        if self.kind == "ivf":
            return (f"the {self.params['nprobe']} of {self.params['nlist']} IVF cells searched (nprobe) hold fewer "
                    "matching vectors; search more cells (search --nprobe) or use a flat index")  # fmt: skip
        if self.kind == "hnsw":
            return f"the HNSW search (ef={self.params['ef_search']}) stopped early; raise ef_search"
        return "the index holds fewer matching items"

    def _search_params(self, k: int) -> dict:
        params = {"flat": {}, "ivf": {"nprobe": self.params["nprobe"]},
                  "hnsw": {"ef": max(self.params["ef_search"], k)}}[self.kind]  # fmt: skip
        return {"metric_type": "IP", "params": params}

    def query(self, queries, k: int = 10, *, where: str | Filter | None = None) -> list[list[dict]]:
        """Per query, the k nearest committed items ``{"id", "score", "distance"[, "label"][, "metadata"]}`` (among
        those matching ``where``). Staged changes are not searched before `save`."""
        q = torch.as_tensor(np.asarray(queries), dtype=torch.float32).reshape(-1, self.dim)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k = {k!r} is out of range: give 1 ≤ k ≤ {min(len(self), MAX_K)}")
        expr = self._milvus_filter(where)
        k = min(int(k), max(1, len(self)), MAX_K)
        if not len(self):
            return [[] for _ in range(len(q))]
        names = ["item", *(["label"] if self.has_labels else []), *(f"m_{f}" for f in self.field_names)]
        found = self._connect().search(self.collection, data=F.normalize(q, dim=1).tolist(), limit=k, filter=expr,
                                       output_fields=names, search_params=self._search_params(k))  # fmt: skip
        return [[self._hit(h) for h in hits] for hits in found]

    def _hit(self, h: dict) -> dict:
        entity, score = h["entity"], float(h["distance"])
        hit = {"id": self._full_id(entity["item"]), "score": score, "distance": math.sqrt(max(0.0, 2 - 2 * score))}
        if self.has_labels:
            hit["label"] = entity.get("label")
        if self.field_names:
            hit["metadata"] = self._metadata(entity)
        return hit

    def check_model(self, model_source: dict) -> None:
        """Refuse to mix embeddings of different models in one index."""
        EmbeddingIndex.check_model(self, model_source)

    # -------------------------------------------------------------------------------------- staging
    def _batch(self, embeddings, ids, labels, paths: bool, metadata) -> tuple[np.ndarray, list[str], list | None]:
        has_labels = self.has_labels if len(self) else None
        x, new = checked_batch(embeddings, ids, labels, paths, self.dim, has_labels, self.id_type)
        id_type = "path" if paths else "name"
        staged = {i for _, batch, _, _ in self._adds for i in batch}
        twice = sorted({i for i in new if new.count(i) > 1} | (set(new) & staged))
        if twice:
            raise ConfigError(f"{len(twice)} ids are given twice (e.g. {twice[0]!r}): an id names one item")
        self.id_type = self.id_type or id_type
        if self.id_type == "path" and self.image_root is None and new:
            with contextlib.suppress(ValueError):
                self.image_root = os.path.commonpath(sorted({os.path.dirname(i) for i in new}))
        return F.normalize(x, dim=1).numpy(), new, check_metadata(metadata, len(new))

    def add(self, embeddings, ids: list[str], labels: list | None = None, *, paths: bool = False,
            metadata: list[dict] | None = None) -> None:  # fmt: skip
        """Stage N embeddings with their ids (labels, metadata) for the next `save`; an indexed id is an error."""
        x, new, metadata = self._batch(embeddings, ids, labels, paths, metadata)
        indexed = self._present_ids(new)
        present = [i for i in new if i not in self._deletes and self._stored_id(i) in indexed]
        if present:
            raise ConfigError(f"{len(present)} of the {len(new)} items to add are already indexed (e.g. "
                              f"{present[0]}): use update (`deepmetric index update`) to replace them")  # fmt: skip
        self._stage(x, new, labels, metadata)

    def _present_ids(self, ids: list[str]) -> set[str]:
        return set(self._present([self._stored_id(i) for i in ids]))

    def _stage(self, x, ids, labels, metadata) -> None:
        if self.has_labels is None or not len(self):
            self.has_labels = labels is not None
        for row in metadata or []:
            self.field_names += [k for k in row if k not in self.field_names]
        self._adds.append((x, ids, labels, metadata))

    def update(self, embeddings, ids: list[str], labels: list | None = None, *, paths: bool = False,
               metadata: list[dict] | None = None) -> tuple[int, int]:  # fmt: skip
        """Stage the replacement of the indexed items with these ids and the addition of the others; returns
        ``(replaced, added)``."""
        x, new, metadata = self._batch(embeddings, ids, labels, paths, metadata)
        indexed = self._present_ids(new)
        present = [i for i in new if self._stored_id(i) in indexed]
        self._deletes.update(dict.fromkeys(present))
        self._stage(x, new, labels, metadata)
        return len(present), len(new) - len(present)

    def resolve_ids(self, given: list[str]) -> list[str]:
        """The indexed ids among ``given`` (as search reports them, cwd-relative paths, or as stored); a
        `ConfigError` names the unknown ones."""
        candidates = {}
        for g in dict.fromkeys(str(i) for i in given):
            options = [g] if self.id_type != "path" else [os.path.abspath(g), self._full_id(g)]
            candidates[g] = [self._stored_id(o) for o in options]
        present = self._present(sorted({c for options in candidates.values() for c in options}))
        found, unknown = [], []
        for g, options in candidates.items():
            hit = next((o for o in options if o in present), None)
            (unknown.append(g) if hit is None else found.append(self._full_id(hit)))
        if unknown:
            raise ConfigError(f"{len(unknown)} of {len(given)} ids are not in the index: {', '.join(unknown[:5])}"
                              f"{' …' if len(unknown) > 5 else ''}; give ids as search reports them; nothing was "
                              "changed")  # fmt: skip
        return found

    def delete(self, ids: list[str] | None = None, *, where: str | Filter | None = None) -> list[str]:
        """Stage the removal of the items with these ids (an unknown one is a `ConfigError`), or of those matching
        ``where``; returns their ids."""
        if (ids is None) == (where is None):
            raise ConfigError("delete: give the ids to delete or a where filter (one of them)")
        if where is not None:
            removed = [self._full_id(r["item"]) for r in self._rows(self._milvus_filter(where), ["item"])]
        else:
            removed = self.resolve_ids(ids)
        self._deletes.update(dict.fromkeys(removed))
        return removed

    # ------------------------------------------------------------------------------------------- writing
    def save(self, folder: str | Path | None = None) -> None:
        """Write the staged changes as generation C + 1 and commit it by replacing ``meta.json`` (see the module
        doc): a kill at any moment leaves the index as before."""
        if folder is not None and os.path.abspath(folder) != os.path.abspath(self.folder):
            raise ConfigError(f"a Milvus index is saved in its own folder {self.folder}, not {folder}")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._is_lite():
            self._lite_path().parent.mkdir(parents=True, exist_ok=True)
        with _writer_lock(self.folder):
            meta = _read_meta(self.folder)
            if meta is not None and meta.get("committed") != self.committed:
                raise RunError(f"{self.folder} changed while this index was loaded (it is now at generation "
                               f"{meta.get('committed')}, loaded at {self.committed}): another process wrote it; "
                               "load it again and retry")  # fmt: skip
            client = self._connect()
            if not client.has_collection(self.collection):
                self._create_collection(sum(len(b[1]) for b in self._adds))
            self._clean()
            gen = self.committed + 1
            _pause("generation")
            retired = self._retire(gen)
            added = self._insert(gen)
            client.flush(self.collection)
            _pause("items")
            count = self._count - retired + added
            self._write_meta(gen, count, self.next_row + added)  # the commit
            _pause("pointer")
            client.delete(self.collection, filter=f"until <= {gen - 1}")  # purge: not even the previous one's
            client.flush(self.collection)
        self.committed, self._count, self.next_row = gen, count, self.next_row + added
        self._adds, self._deletes, self._cache = [], {}, None

    def _create_collection(self, n: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("item", DataType.VARCHAR, max_length=65535)
        schema.add_field("gen", DataType.INT64)
        schema.add_field("until", DataType.INT64)
        params = {}
        if self.kind == "ivf":
            self.params["nlist"] = self.params["nlist"] or max(1, min(65536, int(2 * math.sqrt(max(n, 1)))))
            params = {"nlist": self.params["nlist"]}
        elif self.kind == "hnsw":
            params = {"M": self.params["hnsw_m"], "efConstruction": self.params["ef_construction"]}
        index_params = self._client.prepare_index_params()
        # one JSON "params" entry: Milvus (server and Lite) parses it, whereas pymilvus sends a plain dict key by
        # key and Milvus Lite reads none of them (nlist and M would silently stay at their defaults)
        index_params.add_index(field_name="vector", index_type=INDEX_TYPES[self.kind], metric_type="IP",
                               params={"params": json.dumps(params)} if params else {})  # fmt: skip
        self._client.create_collection(self.collection, schema=schema, index_params=index_params)

    def _clean(self) -> None:
        """Undo what a killed writer left: its rows (gen > C) and its retirement marks (C < until < ALIVE)."""
        c, client = self.committed, self._client
        client.delete(self.collection, filter=f"gen > {c}")
        marked = self._rows(f"until > {c} and until < {ALIVE}", ["pk"])
        for start in range(0, len(marked), BATCH):
            client.upsert(self.collection, [{"pk": r["pk"], "until": ALIVE} for r in marked[start : start + BATCH]],
                          partial_update=True)  # fmt: skip

    def _retire(self, gen: int) -> int:
        """Mark the rows of the staged deletions ``until = gen``; returns how many."""
        present = self._present([self._stored_id(i) for i in self._deletes])
        pks = list(present.values())
        for start in range(0, len(pks), BATCH):
            self._client.upsert(self.collection, [{"pk": p, "until": gen} for p in pks[start : start + BATCH]],
                                partial_update=True)  # fmt: skip
        return len(pks)

    def _insert(self, gen: int) -> int:
        """Insert the staged additions with ``gen``; returns how many rows."""
        pk = self.next_row
        for x, ids, labels, metadata in self._adds:
            rows = []
            for n, item in enumerate(ids):
                row = {"pk": pk, "vector": x[n].tolist(), "item": self._stored_id(item), "gen": gen, "until": ALIVE}
                if labels is not None:
                    row["label"] = labels[n]
                for key, value in (metadata[n] if metadata else {}).items():
                    if value is not None:
                        row[f"m_{key}"] = value
                rows.append(row)
                pk += 1
            for start in range(0, len(rows), BATCH):
                self._client.insert(self.collection, rows[start : start + BATCH])
        return pk - self.next_row

    def _write_meta(self, gen: int, count: int, next_row: int) -> None:
        where = os.path.abspath(self.folder)
        model = dict(self.model)
        if model.get("run_dir"):
            absolute = os.path.abspath(model["run_dir"])
            model["run_dir"], model["run_dir_absolute"] = _relative_to(where, absolute), absolute
        uri = self.uri
        if uri is not None and self._is_lite():
            uri = _relative_to(where, os.path.abspath(uri))
        root = {"image_root": _relative_to(where, self.image_root), "image_root_absolute": self.image_root} \
            if self.image_root else {}  # fmt: skip
        meta = {"format": FORMAT, "backend": "milvus", "uri": uri, "lite_file": LITE_FILE if self.uri is None else None,
                "collection": self.collection, "committed": gen, "next_row": next_row, "kind": self.kind,
                "dim": self.dim, "count": count, "params": self.params, "model": model, "id_type": self.id_type,
                "has_labels": bool(self.has_labels), "fields": self.field_names, **root}  # fmt: skip
        text = json.dumps(meta, indent=2).encode()
        atomic_write_bytes(self.folder / POINTER, lambda f: f.write(text))

    # --------------------------------------------------------------------------------------------- load
    @classmethod
    def load(cls, folder: str | Path, root: str | Path | None = None, meta: dict | None = None) -> MilvusIndex:
        """The Milvus index described by ``folder/meta.json``; ``root``: the folder its images moved to."""
        folder = Path(folder)
        meta = meta if meta is not None else _read_meta(folder)
        if meta is None:
            raise FileNotFoundError(f"{folder} is not an index directory (no {POINTER})")
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{folder / POINTER}: Milvus index format {meta.get('format')!r} is not known to this "
                              f"deepmetric (it reads {FORMAT}); upgrade deepmetric or {REBUILD}")  # fmt: skip
        try:
            return cls._from_meta(folder, meta, root)
        except (KeyError, TypeError) as e:
            raise IntegrityError(f"{folder / POINTER} is malformed (missing or bad field {e}); {REBUILD}") from e

    @classmethod
    def _from_meta(cls, folder: Path, meta: dict, root) -> MilvusIndex:
        where = os.path.abspath(folder)
        uri = meta["uri"]
        if uri is not None and not uri.startswith(("http://", "https://", "tcp://", "unix:")):
            uri = os.path.normpath(os.path.join(where, uri))
        model = dict(meta["model"])
        if model.get("run_dir"):
            absolute = model.pop("run_dir_absolute", None)
            relative = os.path.normpath(os.path.join(where, model["run_dir"]))
            model["run_dir"] = relative if os.path.exists(relative) or absolute is None else absolute
        model.pop("run_dir_absolute", None)
        p = meta["params"]
        index = cls(meta["kind"], meta["dim"], folder=folder, uri=uri, model=model, nlist=p["nlist"],
                    nprobe=p["nprobe"], hnsw_m=p["hnsw_m"], ef_search=p["ef_search"],
                    ef_construction=p["ef_construction"], collection=meta["collection"])  # fmt: skip
        index.committed, index.next_row, index._count = (
            int(meta["committed"]),
            int(meta["next_row"]),
            int(meta["count"]),
        )
        index.id_type, index.has_labels, index.field_names = meta["id_type"], meta["has_labels"], list(meta["fields"])
        stored_root = meta.get("image_root")
        if root is not None:
            if not Path(root).is_dir():
                raise ConfigError(f"--root {root}: no such folder; give the folder that now holds the indexed images")
            if index.id_type != "path":
                raise ConfigError(f"--root {root}: this index's ids are names, not image paths; drop --root")
            index.image_root = os.path.abspath(root)
        elif stored_root is not None:
            relative = os.path.normpath(os.path.join(where, stored_root))
            absolute = meta.get("image_root_absolute")
            index.image_root = relative if os.path.exists(relative) or absolute is None else absolute
        if index.committed and not index._connect().has_collection(index.collection):
            raise IntegrityError(f"{folder / POINTER} names the collection {index.collection}, which {index.location} "
                                 f"does not hold (dropped, or another server?); {REBUILD}")  # fmt: skip
        return index


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / POINTER).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{folder / POINTER} cannot be read ({e}): the index pointer is corrupt; {REBUILD}") from e
    if not isinstance(meta, dict):
        raise IntegrityError(f"{folder / POINTER} is not a JSON object; {REBUILD}")
    return meta


def _locked(path: Path) -> bool:
    """Whether another process holds Milvus Lite's lock on the file (a folder, for milvus-lite 3)."""
    lock = path / "LOCK"
    if not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False

"""Building a run's parts from its config, and loading a finished run: the one place that assembles them.

- `build_method(cfg, in_channels, num_classes)`: model (backbone + the method's heads) and method — no data needed.
- `build_data(cfg, device)`: dataset table, protocol splits, datasets, the class-balanced sampler and the train /
  eval augmentation (`RunData`); `build_train_loader` its training batches.
- `load_run(run_dir, checkpoint)`: a finished (or interrupted) run for every reader — the Python API, ``evaluate``,
  ``embed``, ``report``, MLRC, `EmbeddingModel`: the method with its weights from the checkpoint's metadata alone;
  the data only when a reader asks for a split (`LoadedRun.data`).
- `embed_split_of` / `score_split`: a split's test-time embeddings (sharded under torchrun) and their metrics, as
  training's validation computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .config import Config, load_config
from .data import (
    BatchAugment,
    ClassBalancedBatchSampler,
    ImageDataset,
    ImageTable,
    Splits,
    collate_batch,
    load_dataset,
    make_splits,
)
from .data.images import resolve_load_size
from .precision import DTYPES


def resolve_device(name: str | None) -> torch.device:
    """``auto`` / None: CUDA if available, then Apple's MPS, then the CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    if device.type == "mps" and not mps_available:
        raise ValueError(f"train.device={name!r} but Apple's MPS is not available on this machine")
    return device


def build_model(cfg: Config, in_channels: int, *, load_pretrained: bool = True):
    """A fresh model: the backbone (ImageNet / local weights unless ``load_pretrained`` is False, e.g. when a
    checkpoint will overwrite them) and the heads the configured method declares."""
    from .methods import method_heads
    from .models import build_embedder

    return build_embedder(cfg, in_channels, heads=method_heads(cfg), load_pretrained=load_pretrained)


def build_method(cfg: Config, in_channels: int, num_classes: int, *, load_pretrained: bool = True, model=None):
    """The run's method around ``model`` (default: `build_model`'s). A model must be final before the method is
    built around it (e.g. BatchNorm converted for torchrun): methods keep references to its parameters."""
    from .methods import method_from_config

    model = model if model is not None else build_model(cfg, in_channels, load_pretrained=load_pretrained)
    return method_from_config(cfg, model, num_classes)


@dataclass
class RunData:
    """A run's data: the table, the protocol's splits, the datasets, the sampler and the augmentation."""

    table: ImageTable
    splits: Splits
    train_classes: np.ndarray  # the original labels of the training classes, in contiguous-label order
    train_set: ImageDataset
    val_set: ImageDataset | None
    test_set: ImageDataset
    sampler: ClassBalancedBatchSampler
    train_aug: BatchAugment
    eval_aug: BatchAugment
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.train_classes)

    def split(self, name: str) -> ImageDataset:
        """``train``, ``val`` or ``test``; a clear error when the run has no such split."""
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}.get(name)
        if dataset is None:
            raise ValueError(f"this run has no {name} split (train; val unless protocol.val_by=none; test)")
        return dataset

    def inference_meta(self, cfg: Config) -> dict:
        """What loading a checkpoint for inference needs besides the config: no dataset required."""
        native = self.table.images.shape[-1] if self.table.images is not None else None
        return {
            "num_classes": self.num_classes,
            "in_channels": self.train_set.channels,
            "load_size": self.train_set.load_size if native is None else int(native),
            "class_names": {int(k): str(v) for k, v in (self.table.class_names or {}).items()},
        }


def build_data(cfg: Config, device: torch.device | str = "cpu") -> RunData:
    """Load the dataset and apply the protocol; the sampler is this process's share under torchrun."""
    table = load_dataset(cfg.data.name, cfg.data.root, **cfg.data.options)
    splits = make_splits(table, cfg.protocol, seed=cfg.train.seed)
    train_raw = splits.train_labels[splits.train]
    train_classes = np.unique(train_raw)
    contiguous = np.full(len(table), -1, dtype=np.int64)
    contiguous[splits.train] = np.searchsorted(train_classes, train_raw)
    # file images: decoded at data.load_size, else at their own size capped at what the augmentation takes
    load_size = resolve_load_size(table, cfg.data.load_size, needed=max(cfg.augment.size, cfg.augment.resize))
    common = dict(channels=cfg.data.channels, load_size=load_size, on_bad_image=cfg.data.on_bad_image)
    train_set = ImageDataset(table, splits.train, labels=contiguous, **common)
    val_set = ImageDataset(table, splits.val, **common) if len(splits.val) else None
    test_set = ImageDataset(table, splits.test, **common)
    sampler = ClassBalancedBatchSampler(
        train_set.labels, cfg.data.classes_per_batch, cfg.data.samples_per_class, seed=cfg.train.seed,
        small_classes=cfg.data.small_classes, rank=distributed.rank(), world_size=distributed.world_size(),
    )  # fmt: skip
    train_aug = BatchAugment(cfg.augment, train=True).to(device)
    eval_aug = BatchAugment(cfg.augment, train=False).to(device)
    return RunData(table, splits, train_classes, train_set, val_set, test_set, sampler, train_aug, eval_aug)


def build_train_loader(data: RunData, cfg: Config, device: torch.device) -> torch.utils.data.DataLoader:
    """Training batches in the sampler's order. The loader has a private generator: creating an iterator must not
    draw from the global RNG (methods draw from it, and a resumed run creates one more iterator than an
    uninterrupted one)."""
    return torch.utils.data.DataLoader(
        data.train_set, batch_sampler=data.sampler, collate_fn=collate_batch, num_workers=cfg.data.workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.train.seed),
    )  # fmt: skip


def embed_split_of(method, data: RunData, split: str, cfg: Config, device, *, progress: bool = False,
                   trunk: bool = False):  # fmt: skip
    """The method's test-time embeddings of ``split`` in order; under torchrun each process embeds a part and all
    get the whole (a split smaller than the process count is embedded whole by every process)."""
    from .training.evaluate import embed_split, gather_embedded

    dataset = data.split(split)
    world = distributed.world_size()
    if len(dataset) < world:
        return embed_split(method, dataset, data.eval_aug, device, cfg.data.eval_batch_size, trunk=trunk)
    positions = np.arange(len(dataset))[distributed.shard(len(dataset))] if world > 1 else None
    emb = embed_split(method, dataset, data.eval_aug, device, cfg.data.eval_batch_size, cfg.data.workers,
                      progress and distributed.is_main(), positions=positions, trunk=trunk)  # fmt: skip
    return gather_embedded(emb) if world > 1 else emb


@torch.no_grad()
def embed_training_images(data: RunData, cfg: Config, device, positions: np.ndarray, fn, seed: int,
                          progress=lambda iterable, description: iterable) -> torch.Tensor:  # fmt: skip
    """``fn`` of the training images at dataset ``positions``, in batches of ``data.eval_batch_size``, batch i with the
    training augmentation seeded by ``seed · 100003 + i``, concatenated in order. Under torchrun each process takes
    part of every batch (augmented as the whole batch would be) and the parts are gathered, so every process gets the
    one-process result."""
    from .data import collate_batch

    size, world = cfg.data.eval_batch_size, distributed.world_size()
    batches = [positions[s : s + size] for s in range(0, len(positions), size)]
    if len(batches) > 1 and len(batches[-1]) < world:  # every process gets part of every batch
        batches[-2:] = [np.concatenate(batches[-2:])]
    parts = [(batch, distributed.shard(len(batch))) for batch in batches]
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_sampler=[batch[part].tolist() for batch, part in parts], collate_fn=collate_batch,
        num_workers=cfg.data.workers, generator=torch.Generator(),
    )  # fmt: skip
    chunks = []
    for i, batch in enumerate(progress(loader, "embedding training images")):
        whole, part = parts[i]
        images = data.train_aug(batch["image"].to(device), seed=seed * 100_003 + i,
                                shard=(len(whole), part.start) if distributed.active() else None)  # fmt: skip
        chunks.append(distributed.gather_uneven(fn(images)))
    return torch.cat(chunks)


def score_split(method, data: RunData, split: str, emb, cfg: Config) -> dict[str, float]:
    """Metrics of a split's embeddings: query / gallery where the protocol has them, superclass prefixes, and the
    method's own choice of normalising before ranking (``eval.normalize`` overrides it when set)."""
    from .training.evaluate import score

    masks = {}
    if split == "test" and data.splits.test_query is not None:
        pos = {int(i): p for p, i in enumerate(emb.indices)}
        masks["query_mask"] = np.array([pos[int(i)] for i in data.splits.test_query])
        masks["gallery_mask"] = np.array([pos[int(i)] for i in data.splits.test_gallery])
    normalize = method.normalize_embeddings if cfg.eval.normalize is None else cfg.eval.normalize
    return score(emb, cfg.eval, superclass=data.splits.protocol == "superclass", seed=cfg.train.seed,
                 normalize=normalize, **masks)  # fmt: skip


@dataclass
class LoadedRun:
    """A run read back from its directory: config, method with the chosen checkpoint's weights, its metadata."""

    run_dir: Path
    cfg: Config
    method: torch.nn.Module
    meta: dict
    device: torch.device
    checkpoint: Path
    _data: RunData | None = None

    @property
    def data(self) -> RunData:
        """The run's data, loaded on first use (reading the weights never loads a dataset)."""
        if self._data is None:
            self._data = build_data(self.cfg, self.device)
        return self._data

    def embed(self, split: str, progress: bool = False):
        return embed_split_of(self.method, self.data, split, self.cfg, self.device, progress=progress)

    def score(self, split: str, emb) -> dict[str, float]:
        return score_split(self.method, self.data, split, emb, self.cfg)

    def evaluate(self, split: str, progress: bool = False) -> dict[str, float]:
        return self.score(split, self.embed(split, progress))


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | None = None,
             dtype: str | None = None) -> LoadedRun:  # fmt: skip
    """Read ``run_dir``'s config and ``checkpoints/<checkpoint>.pt`` (``best`` or ``last``) into a `LoadedRun`, on
    ``device`` (default: the run's ``train.device``) in ``dtype`` (default: the run's ``train.dtype``). The
    checkpoint is checked against its recorded hash first (`deepmetric.integrity.IntegrityError` when it does not
    match: a corrupt file never gives silently wrong embeddings)."""
    from .errors import RunError
    from .training.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint!r} not found: {path} (choose best or last)")
    cfg = load_config(run_dir / "config.yaml", [f"train.device={device}"] if device else [])
    state = load_checkpoint(path)
    if "meta" not in state:
        raise RunError(f"{path} predates inference metadata; re-save it with this version of deepmetric")
    meta = state["meta"]
    dev = resolve_device(device or cfg.train.device)
    method = build_method(cfg, meta["in_channels"], meta["num_classes"], load_pretrained=False)
    method = method.to(dev, DTYPES[dtype or cfg.train.dtype])  # before loading: float64 weights stay float64
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as e:  # missing / unexpected keys or shapes: the checkpoint is not of this config's model
        detail = " ".join(str(e).split())[:300]
        raise RunError(f"{path} does not fit the model {run_dir / 'config.yaml'} describes: {detail}") from None
    method.eval()
    return LoadedRun(run_dir, cfg, method, meta, dev, path)

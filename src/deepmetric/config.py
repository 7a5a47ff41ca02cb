"""Run configuration: dataclass schemas, loaded from YAML and ``key=value`` overrides with OmegaConf.

Every key is typed; a wrong key or value is a `ConfigError` naming the full dotted key, the bad value, and the
closest valid keys. ``load_config(path, overrides)`` returns the resolved `Config`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data.augment import AugmentConfig
from .data.splits import ProtocolConfig
from .errors import ConfigError  # re-exported: deepmetric.config.ConfigError


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    channels: int | None = None  # None: the dataset's native channel count
    load_size: int | None = None  # file images: shorter side resized to this, centre square kept; None: the
    # images' own size (median of a probe), capped at what the augmentation needs
    on_bad_image: str = "error"  # or "skip" (counted and logged)
    classes_per_batch: int = 8  # P
    samples_per_class: int = 16  # M
    small_classes: str = "topup"  # or "drop"
    workers: int = 0
    eval_batch_size: int = 512


@dataclass
class ModelConfig:
    backbone: str = "small_cnn"
    pretrained: bool = False
    weights: str | None = None
    pooling: str = "avg"
    freeze_bn: bool = False
    width: int = 32
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    embedding_dim: int = 128
    normalize: bool = True
    trainable_blocks: int | None = None  # partial fine-tuning: the last K trunk blocks (+ its last unit); None: all
    channels_last: bool = False  # NHWC memory layout (about 2 × faster for EfficientNet-Lite on CPUs)


@dataclass
class LossConfig:
    name: str = "triplet_margin"
    params: dict[str, Any] = field(default_factory=dict)
    lr_mult: float = 1.0  # learning-rate multiplier of the loss's own parameters (proxies, margins)
    weight_decay: float | None = None  # of the loss's parameters; None: the optimizer's


@dataclass
class MinerConfig:
    name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryConfig:
    """A cross-batch memory (XBM, Wang et al., CVPR 2020) for a pair loss: a FIFO queue of the last ``size`` embeddings
    (and labels) of past global batches, used as extra references. From step ``warmup_steps`` + 1 on, the loss is
    ``batch_weight`` × ℓ(batch, batch) + ``weight`` × ℓ(batch, queue with the current batch); before, ℓ(batch, batch).
    Top-level ``memory`` serves the standard method (EPS included) and CCP's in-batch term; DiVA takes one per task
    (``method.options.<task>.memory``). docs/combining.md."""

    size: int = 0  # references kept (0: no memory); at least one global batch
    warmup_steps: int = 0  # steps trained on the batch alone before the queue starts filling (XBM: 1,000)
    weight: float = 1.0  # of the loss against the memory
    batch_weight: float = 1.0  # of the in-batch loss beside it (XBM: 1; PML's CrossBatchMemory alone: 0)


@dataclass
class MethodConfig:
    name: str = "standard"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd | rmsprop
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd / rmsprop
    head_lr_mult: float = 1.0  # embedding heads relative to the backbone
    grad_clip_norm: float | None = None
    grad_clip_value: float | None = None  # after the norm clip (CCP's official code clips both at 10)


@dataclass
class ScheduleConfig:
    name: str = "none"  # none | step | multistep | cosine | plateau
    warmup_steps: int = 0
    step_size: int = 1000  # step: decay every step_size steps
    milestones: list[int] = field(default_factory=list)  # multistep, in steps
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine floor
    plateau_patience: int = 2  # evaluations without improvement before decaying
    plateau_factor: float = 0.5


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 2
    max_steps: int | None = None
    log_every: int = 20  # steps
    eval_every_steps: int | None = None  # None: once per epoch
    early_stopping_patience: int | None = None  # evaluations without improvement
    select_metric: str = "map@r"
    select_split: str = "val"  # "val", or "test" (leaks; recorded in metrics.json)
    amp: bool = False  # mixed precision on CUDA (loss math in float32)
    dtype: str = "float32"  # float32 | float64 (numerical checks; excludes amp)
    device: str = "auto"  # auto (CUDA, then Apple's MPS, then the CPU) | cpu | cuda | cuda:N | mps
    tensorboard: bool = False
    baseline: bool = True  # score the model as built (and a pretrained trunk's pooled features) before step 1
    checkpoint_every: int | None = None  # also write last.pt every N steps (besides evaluations and epoch ends)
    skip_nonfinite_steps: int = 0  # steps with a NaN/Inf loss or gradient skipped (no update) before the run stops


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    clustering: bool = True
    backend: str = "torch"
    memory_budget: int = 1 << 30
    average: str = "micro"
    normalize: bool | None = None  # L2-normalise before ranking; None: as the method declares (CCP ranks raw)


@dataclass
class ReportConfig:
    enabled: bool = True
    tsne_points: int = 2000
    grid_queries: int = 8
    grid_neighbours: int = 8


@dataclass
class LogConfig:
    """Experiment tracking besides log.jsonl (TensorBoard is ``train.tensorboard``)."""

    mlflow: bool = False  # an MLflow run: params, metrics, artifacts (pip install 'deepmetric[mlflow]')
    mlflow_tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    mlflow_experiment: str = "deepmetric"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(normalization="auto"))
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    log: LogConfig = field(default_factory=LogConfig)
    name: str = "run"


CHOICES = {
    "data.on_bad_image": ("error", "skip"),
    "data.small_classes": ("topup", "drop"),
    "train.select_split": ("val", "test"),
    "train.dtype": ("float32", "float64"),
    "eval.backend": ("torch", "faiss"),
    "eval.average": ("micro", "macro"),
}
POSITIVE = ("data.classes_per_batch", "data.samples_per_class", "data.eval_batch_size", "model.embedding_dim",
            "train.log_every")  # fmt: skip


# Dicts of constructor arguments: a layer that sets one replaces it whole (a base file's loss.params must not leak
# into a different loss); a dotted override (loss.params.margin=0.3) still edits one entry.
REPLACED_DICTS = ("loss.params", "miner.params", "method.options", "data.options", "protocol.coarse_map")


def _merge_layer(cfg: DictConfig, layer: DictConfig) -> DictConfig:
    for key in REPLACED_DICTS:
        if OmegaConf.select(layer, key, default=None) is not None and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, {}, merge=False)
    return OmegaConf.merge(cfg, layer)


def _all_keys(node, prefix="") -> list[str]:
    keys = []
    for k, v in node.items() if isinstance(node, dict | DictConfig) else []:
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig) and not full.endswith((".params", ".options")):
            keys += _all_keys(v, full + ".")
    return keys


def _wrap(e: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    hint = ""
    if "not in" in msg or "Missing key" in msg:
        close = difflib.get_close_matches(key, _all_keys(schema), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        msg = msg.split(" Did you mean")[0].rstrip(".") if close else msg  # Python's own suggestion names the bare key
    return ConfigError(f"{source}: invalid config key {key!r}: {msg}{hint}")


def parse_overrides(overrides=None, **keywords) -> list[str]:
    """The one KEY=VALUE parser: ``["train.epochs=3", ...]``, a dict ``{"train.epochs": 3}`` (dotted keys, or ``__``
    for dots as Python keywords need: ``train__epochs=3``) → ``["train.epochs=3", ...]``. Values are parsed as YAML
    later, as on the command line: ``"{a: 1}"``, ``"[0, 1]"``, ``null``, ``0.5``."""
    items: list[str] = []
    if isinstance(overrides, dict):
        keywords = {**overrides, **keywords}
    elif overrides is not None:
        for item in overrides:
            key, sep, _ = str(item).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"overrides are KEY=VALUE (e.g. train.epochs=3), got {item!r}")
            items.append(str(item))
    for key, value in keywords.items():
        dotted = key.replace("__", ".")
        if isinstance(value, bool):
            value = str(value).lower()
        elif value is None:
            value = "null"
        items.append(f"{dotted}={value}")
    return items


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults ← YAML file ← overrides (``["train.epochs=3", ...]``, or a dict: `parse_overrides`) → validated
    `Config`; the method's typed options are checked here too, before any data is read."""
    schema = OmegaConf.structured(Config)
    cfg = schema
    if path is not None:
        for layer in _layers(Path(path)):
            try:
                cfg = _merge_layer(cfg, layer[1])
            except OmegaConfBaseException as e:
                raise _wrap(e, schema, str(layer[0])) from None
    if overrides:
        try:
            if isinstance(overrides, dict) and not any("." in k or "__" in k for k in overrides):
                extra = OmegaConf.create(overrides)  # a nested dict
            else:
                overrides = parse_overrides(overrides)
                whole = [o for o in overrides if o.partition("=")[0] in REPLACED_DICTS]  # loss.params={...}
                if whole:
                    cfg = _merge_layer(cfg, OmegaConf.from_dotlist(whole))
                extra = OmegaConf.from_dotlist(list(overrides))
            cfg = OmegaConf.merge(cfg, extra)
        except OmegaConfBaseException as e:
            raise _wrap(e, schema, "override") from None
    try:
        obj: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _wrap(e, schema, str(path or "config")) from None
    validate(obj)
    if obj.augment.normalization == "auto":  # the normalisation the backbone's weights expect (stored resolved)
        from .models.backbones import backbone_normalization

        obj.augment.normalization = backbone_normalization(obj.model.backbone)
    from .methods import check_method_config

    try:
        check_method_config(obj)  # unknown method, option or type, a combination that makes no sense: before any data
    except ValueError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None
    return obj


def _layers(path: Path, seen: tuple = ()) -> list[tuple[Path, DictConfig]]:
    """The YAML file and, first, the files named by its ``base:`` key (relative to it), recursively."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular base: chain {[str(p) for p in seen]}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    base = node.pop("base", None)
    layers = _layers((path.parent / base), (*seen, path.resolve())) if base else []
    return [*layers, (path, node)]


def validate(cfg: Config) -> None:
    """Value checks OmegaConf's types cannot express; registered names (datasets, backbones, optimizers, schedules)
    are checked against their registries, an unknown one naming the closest valid names."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    from .choices import registries

    for key, registry in registries().items():
        try:
            registry.get(get(cfg, key))
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    for key in POSITIVE:
        if get(cfg, key) < 1:
            raise ConfigError(f"{key}={get(cfg, key)!r} must be ≥ 1")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas={cfg.optim.betas!r} must be two numbers in [0, 1)")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr!r} must be > 0")
    if cfg.train.skip_nonfinite_steps < 0:
        raise ConfigError(
            f"train.skip_nonfinite_steps={cfg.train.skip_nonfinite_steps} must be ≥ 0 (0: stop at the first)"
        )
    if cfg.train.dtype == "float64" and cfg.train.amp:
        raise ConfigError("train.amp (mixed precision) and train.dtype=float64 exclude each other")
    if cfg.data.load_size is not None and cfg.data.load_size < 1:
        raise ConfigError(f"data.load_size={cfg.data.load_size} must be ≥ 1 (or null: follow the images)")
    if cfg.model.trainable_blocks is not None and cfg.model.trainable_blocks < 0:
        raise ConfigError(f"model.trainable_blocks={cfg.model.trainable_blocks} must be ≥ 0 (or null: train all)")
    if cfg.train.checkpoint_every is not None and cfg.train.checkpoint_every < 1:
        raise ConfigError(f"train.checkpoint_every={cfg.train.checkpoint_every} must be ≥ 1 (or null)")
    if cfg.train.epochs < 1 and not cfg.train.max_steps:
        raise ConfigError("train.epochs must be ≥ 1 (or set train.max_steps)")
    check_memory(cfg.memory, "memory", cfg.data.classes_per_batch * cfg.data.samples_per_class)


def check_memory(memory: MemoryConfig, key: str, batch: int) -> None:
    """The values of a cross-batch memory at config key ``key``, for global batches of ``batch`` rows."""
    small = {f"{key}.{k}": getattr(memory, k) for k in ("size", "warmup_steps", "weight", "batch_weight")
             if getattr(memory, k) < 0}  # fmt: skip
    if small:
        raise ConfigError(f"{small}: a memory's size, warm-up and weights must be ≥ 0")
    if not memory.size:
        return
    if memory.size < batch:
        raise ConfigError(
            f"{key}.size={memory.size} is smaller than the global batch (data.classes_per_batch × "
            f"data.samples_per_class = {batch}): the queue holds the current batch too; use {key}.size ≥ {batch}, or 0 "
            "for no memory"
        )
    if memory.weight == 0:
        raise ConfigError(f"{key}.weight=0 switches the memory's loss off; set {key}.size=0 instead")


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))

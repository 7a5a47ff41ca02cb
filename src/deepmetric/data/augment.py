"""Batched image augmentation with kornia, run on the training device.

Train presets: ``random_resized_crop`` (natural images: crop of scale ``scale`` and aspect 3/4–4/3 resized to
``size``), ``pad_crop`` (small images: padded by ``padding`` and cropped back to ``size``, a shift of up to
``padding`` px; images smaller than ``size`` are upsampled to it first), ``none``; plus optional horizontal flip and
colour jitter. Eval presets: ``resize_center_crop`` (shorter side to ``resize``, centre crop
``size``) and ``none`` (resize to ``size`` only if needed). Normalisation presets: ``imagenet`` (RGB, mean/std of
ImageNet on 0–1), ``bninception`` (BGR, 0–255, mean 104/117/128), ``gray`` (0–1, mean 0.5, std 0.5), ``edge``
(0–255, mean 127, std 128: EfficientNet-Lite's weights; one value for every channel, so grey images stay one
channel), ``unit`` (0–1). ``auto`` (a run config's default) is resolved when the config loads to the normalisation the
backbone's weights expect (``edge`` for EfficientNet-Lite, ``imagenet`` otherwise).

Randomness: a call with ``seed=s`` draws every parameter from a private RNG seeded with ``s`` (the global RNG is
restored afterwards), so a training step's augmentation depends only on (run seed, step) and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F

TRAIN_PRESETS = ("random_resized_crop", "pad_crop", "none")
EVAL_PRESETS = ("resize_center_crop", "none")
NORMALIZATIONS = {
    "imagenet": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "bgr": False},
    "bninception": {"scale": 1.0, "mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0), "bgr": True},
    "gray": {"scale": 1 / 255, "mean": (0.5,), "std": (0.5,), "bgr": False},
    "edge": {"scale": 1.0, "mean": (127.0,), "std": (128.0,), "bgr": False},  # EfficientNet-Lite (Google's edge models)
    "unit": {"scale": 1 / 255, "mean": (0.0,), "std": (1.0,), "bgr": False},
}


@dataclass
class AugmentConfig:
    """How images are augmented and normalised (the ``augment`` section of a config)."""

    train: str = "random_resized_crop"
    eval: str = "resize_center_crop"
    size: int = 224
    resize: int = 256
    scale: tuple[float, float] = (0.08, 1.0)
    padding: int = 4
    flip: bool = True
    color_jitter: float = 0.0
    normalization: str = "imagenet"  # a run config's default is "auto", resolved by load_config to the backbone's


class BatchAugment(torch.nn.Module):
    """uint8 B × C × H × W images → normalised float B × C × size × size, for training or evaluation."""

    def __init__(self, cfg: AugmentConfig, train: bool):
        super().__init__()
        if cfg.train not in TRAIN_PRESETS:
            raise ValueError(f"augment.train must be one of {TRAIN_PRESETS}, got {cfg.train!r}")
        if cfg.eval not in EVAL_PRESETS:
            raise ValueError(f"augment.eval must be one of {EVAL_PRESETS}, got {cfg.eval!r}")
        if cfg.normalization == "auto":
            raise ValueError("augment.normalization='auto' must be resolved first (deepmetric.load_config does)")
        if cfg.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"augment.normalization must be one of {sorted(NORMALIZATIONS)}, got {cfg.normalization!r}"
            )
        if cfg.size < 1 or cfg.resize < 1:
            raise ValueError(f"augment.size and augment.resize must be positive, got {cfg.size} and {cfg.resize}")
        self.cfg, self.train_mode = cfg, train
        size = (cfg.size, cfg.size)
        ops: list[torch.nn.Module] = []
        if train:
            if cfg.train == "random_resized_crop":
                ops.append(K.RandomResizedCrop(size, scale=tuple(cfg.scale)))
            elif cfg.train == "pad_crop":
                ops.append(K.RandomCrop(size, padding=cfg.padding, pad_if_needed=True))
            if cfg.flip:
                ops.append(K.RandomHorizontalFlip())
            if cfg.color_jitter > 0:
                j = cfg.color_jitter
                ops.append(K.ColorJitter(j, j, j, min(j / 4, 0.5), p=0.8))
        elif cfg.eval == "resize_center_crop":
            ops += [K.Resize(cfg.resize, side="short"), K.CenterCrop(size)]
        self.ops = K.AugmentationSequential(*ops) if ops else None
        norm = NORMALIZATIONS[cfg.normalization]
        self.scale, self.bgr = norm["scale"], norm["bgr"]
        self.register_buffer("mean", torch.tensor(norm["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm["std"]).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, seed: int | None = None, views: int = 1,
                shard: tuple[int, int] | None = None):  # fmt: skip
        """Augment a uint8 batch; ``views`` > 1 returns a list of independently augmented views.

        ``shard=(global_size, start)``: ``images`` are items ``start …`` of a global batch of ``global_size`` split
        over processes; the random parameters are drawn for the global batch and this part's slice applied, so the
        processes together augment exactly as one process would the whole batch (distributed training)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected a B × C × H × W uint8 batch, got {images.dtype} {tuple(images.shape)}")
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = [self._one_view(images, shard) for _ in range(views)]
        return out if views > 1 else out[0]

    def _sliced_parameters(self, x: torch.Tensor, shard: tuple[int, int]):
        """Kornia parameters drawn for the global batch, cut to this part's rows."""
        total, start = shard
        stop = start + x.shape[0]
        params = self.ops.forward_parameters(torch.Size([total, *x.shape[1:]]))
        sliced = []
        for item in params:
            data = item.data
            if isinstance(data, dict):
                data = {k: (v[start:stop] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == total
                            and k not in ("forward_input_shape", "order") else v) for k, v in data.items()}  # fmt: skip
                if "forward_input_shape" in data:
                    data["forward_input_shape"] = torch.tensor(x.shape)
            sliced.append(type(item)(item.name, data))
        return sliced

    def _to_size(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` resized (bilinear) to ``size`` × ``size``, unless it is that size already."""
        if x.shape[-2:] == (self.cfg.size, self.cfg.size):
            return x
        return F.interpolate(x, size=(self.cfg.size, self.cfg.size), mode="bilinear", align_corners=False)

    def _one_view(self, images: torch.Tensor, shard: tuple[int, int] | None = None) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.train_mode and self.cfg.train == "pad_crop" and min(x.shape[-2:]) < self.cfg.size:
            x = self._to_size(x)  # upsampled, then shifted by `padding` px (not pasted into a black canvas)
        if self.ops is not None and x.shape[0] > 0:
            x = self.ops(x, params=self._sliced_parameters(x, shard)) if shard else self.ops(x)
        x = self._to_size(x)
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std

"""`EmbeddingModel`: a trained run's test-time embedding with its preprocessing, loaded without the training data.

``deepmetric.load(run_dir, checkpoint="best")`` rebuilds the method from the run's ``config.yaml`` and the metadata
in the checkpoint (input channels, class count, load size), loads the weights, and embeds images given as paths,
PIL images, uint8 tensors or arrays, in batches, on CPU or GPU. The embedding is the method's test-time embedding
(e.g. DiVA's weighted concatenation), L2-normalised as the model's heads produce it.

Preprocessing (the same as evaluation during training): decode with Pillow to the run's channel count, resize the
shorter side to the load size and keep the centre square, then the run's eval transform (resize + centre crop or
none) and normalisation.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..data import BadImageError, BatchAugment, decode_image
from ..data.augment import NORMALIZATIONS
from ..data.images import image_to_tensor


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EvalTransform(nn.Module):
    """uint8 N × C × L × L → normalised float N × C × S × S with plain torch ops (traceable, ONNX-exportable);
    equal to `BatchAugment(train=False)` on square inputs (tested)."""

    def __init__(self, cfg: Config, in_channels: int):
        super().__init__()
        a = cfg.augment
        self.mode, self.size, self.resize = a.eval, a.size, a.resize
        norm = NORMALIZATIONS[a.normalization]
        mean, std = torch.tensor(norm["mean"]), torch.tensor(norm["std"])
        self.out_channels = 3 if (in_channels == 1 and len(norm["mean"]) == 3) else in_channels
        self.scale, self.bgr = float(norm["scale"]), bool(norm["bgr"])
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] != self.out_channels:
            x = x.expand(-1, self.out_channels, -1, -1)
        if self.mode == "resize_center_crop":
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=True)
            top = (self.resize - self.size) // 2
            x = x[:, :, top : top + self.size, top : top + self.size]
        elif x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std


class ExportableEmbedder(nn.Module):
    """uint8 images at the load size → the method's test-time embedding: what export ships."""

    def __init__(self, transform: EvalTransform, method: nn.Module):
        super().__init__()
        self.transform, self.method = transform, method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.embed(self.transform(images))


class EmbeddingModel:
    """A loaded run: ``embed(...)`` → N × D float32 CPU tensor."""

    def __init__(self, method: nn.Module, cfg: Config, meta: dict, source: dict, device: torch.device):
        self.method, self.cfg, self.meta, self.source, self.device = method.eval(), cfg, meta, source, device
        self.channels, self.load_size = meta["in_channels"], meta["load_size"]
        self.transform = EvalTransform(cfg, self.channels).to(device)
        self.augment = BatchAugment(cfg.augment, train=False).to(device)
        with torch.no_grad():
            probe = torch.zeros(1, self.channels, self.load_size, self.load_size, dtype=torch.uint8, device=device)
            self.dim = int(self.method.embed(self.augment(probe)).shape[1])

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", device: str | None = None) -> EmbeddingModel:
        """The run's method with ``checkpoint``'s weights (`deepmetric.run.load_run`), in float32."""
        from ..run import load_run

        run = load_run(run_dir, checkpoint, device or "auto", dtype="float32")
        source = {"run_dir": str(Path(run_dir).resolve()), "checkpoint": checkpoint,
                  "checkpoint_sha256": file_sha256(run.checkpoint)}  # fmt: skip
        return cls(run.method, run.cfg, run.meta, source, run.device)

    # ------------------------------------------------------------------------------------------ inputs
    def to_uint8(self, image) -> torch.Tensor:
        """One image (path, PIL image, C×H×W / H×W×C array or tensor) → C × L × L uint8 at the load size."""
        from PIL import Image

        if isinstance(image, str | Path):
            return decode_image(str(image), self.channels, self.load_size)
        if isinstance(image, Image.Image):
            return image_to_tensor(image, self.channels, self.load_size)
        t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3:
            raise ValueError(f"an image must be 2-D or 3-D, got shape {tuple(t.shape)}")
        if t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
            t = t.permute(2, 0, 1)
        if t.dtype != torch.uint8:
            raise ValueError(f"image tensors must be uint8 (0–255), got {t.dtype}; pass the decoded image")
        if t.shape[0] != self.channels:
            t = t.float().mean(0, keepdim=True).round().to(torch.uint8) if self.channels == 1 else t.expand(3, -1, -1)
        if t.shape[-2:] != (self.load_size, self.load_size):
            t = _resize_centre_square(t, self.load_size)
        return t.contiguous()

    # ----------------------------------------------------------------------------------------- embedding
    @torch.no_grad()
    def embed(self, images, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embeddings (N × D, CPU float32) of a batch tensor (N × C × H × W uint8), or a list of images / paths.

        An unreadable path raises `BadImageError` naming it; use `embed_paths` to skip and report instead.
        """
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            items = list(images)
        elif isinstance(images, str | Path) or not isinstance(images, Sequence | torch.Tensor | np.ndarray):
            items = [images]
        else:
            items = list(images)
        if not items:
            return torch.empty(0, self.dim)
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(items), batch_size)
        for s in tqdm(starts, desc="embedding", unit="batch", disable=not progress or None):
            batch = torch.stack([self.to_uint8(i) for i in items[s : s + batch_size]]).to(self.device)
            out.append(self.method.embed(self.augment(batch)).float().cpu())
        return torch.cat(out)

    def embed_paths(self, paths: Sequence[str], batch_size: int = 256, progress: bool = False):
        """``(embeddings, kept_paths, bad)``: unreadable images are skipped and listed as ``(path, reason)``."""
        kept, bad, decoded = [], [], []
        for p in paths:
            try:
                decoded.append(decode_image(str(p), self.channels, self.load_size))
                kept.append(str(p))
            except BadImageError as e:
                bad.append((str(p), str(e)))
        if not decoded:
            return torch.empty(0, self.dim), kept, bad
        return self.embed(torch.stack(decoded), batch_size, progress), kept, bad

    # ------------------------------------------------------------------------------------------- matching
    def calibration(self, required: bool = True):
        """The run's `Calibration` (``deepmetric calibrate``) for these weights; None when absent and not required."""
        from .matching import load_calibration

        return load_calibration(self.source["run_dir"], self.source["checkpoint_sha256"], required=required)

    def match(self, images, index, *, threshold: float | None = None, **query) -> list:
        """Per image, a `Match` against ``index`` (an `EmbeddingIndex` of this model, or its folder): the nearest
        indexed item's label when it lies within the calibrated threshold (or ``threshold``), else "no match".
        ``query``: more arguments of the index's ``query`` (e.g. a metadata filter). None for a query whose
        (filtered) search found nothing."""
        from ..errors import ConfigError
        from .index import EmbeddingIndex
        from .matching import check_threshold, decide

        calibration = None
        if isinstance(index, str | Path):
            index = EmbeddingIndex.load(index)
        index.check_model(self.source)
        if threshold is None:
            calibration = self.calibration()
            t = calibration.threshold
        else:  # the user's threshold; the calibrated confidence still applies when the run has one for these weights
            t = check_threshold(threshold)
            with contextlib.suppress(ConfigError):
                calibration = self.calibration(required=False)
        emb = self.embed(images)
        if not len(emb):
            return []
        return [decide(hits, t, calibration) for hits in index.query(emb.numpy(), 1, **query)]

    def exportable(self) -> ExportableEmbedder:
        """The module that export traces: uint8 N × C × L × L → embeddings, CPU, eval mode."""
        return ExportableEmbedder(self.transform, self.method).cpu().eval()

    def preprocessing(self) -> dict:
        """How to prepare an image for the exported model (its metadata)."""
        a = self.cfg.augment
        return {
            "input": f"uint8 N × {self.channels} × {self.load_size} × {self.load_size}",
            "decode": f"{'grayscale' if self.channels == 1 else 'RGB'}, shorter side resized to {self.load_size}, "
            "centre square",
            "in_graph": {"eval": a.eval, "resize": a.resize, "crop": a.size, "normalization": a.normalization},
            "embedding_dim": self.dim,
            "l2_normalised": bool(self.cfg.model.normalize),
        }


def _resize_centre_square(t: torch.Tensor, size: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(t.unsqueeze(0).float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def load(run_dir: str | Path, checkpoint: str = "best", device: str | None = None) -> EmbeddingModel:
    """Load a trained run for inference (see `EmbeddingModel`)."""
    return EmbeddingModel.load(run_dir, checkpoint, device)

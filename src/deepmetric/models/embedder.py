"""`Embedder`: a backbone followed by one or several named linear heads; returns a dict of embeddings."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import Backbone


class Embedder(nn.Module):
    """images (B × C × H × W) → ``{head name: B × dim}``.

    Args:
        backbone: pooled features (B × F). heads: ``{name: dim}``, one linear F → dim layer each (e.g. DiVA's four
            128-d task heads); a dim of 0 passes the pooled features through unchanged.
        normalize: L2-normalise every head's output (bool), or per head (``{name: bool}``).
    """

    def __init__(self, backbone: Backbone, heads: Mapping[str, int] | None = None, normalize=True):
        super().__init__()
        heads = dict(heads or {"embedding": 128})
        if not heads:
            raise ValueError("an Embedder needs at least one head")
        bad = {k: v for k, v in heads.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"head dimensions must be non-negative integers, got {bad}")
        self.backbone = backbone
        self.heads = nn.ModuleDict(
            {name: nn.Identity() if dim == 0 else nn.Linear(backbone.out_features, dim) for name, dim in heads.items()}
        )
        self.dims = {name: dim or backbone.out_features for name, dim in heads.items()}
        if isinstance(normalize, Mapping):
            unknown = set(normalize) - set(heads)
            if unknown:
                raise ValueError(f"normalize names unknown head(s) {sorted(unknown)}; heads are {sorted(heads)}")
            self.normalize = {name: bool(normalize.get(name, True)) for name in heads}
        else:
            self.normalize = dict.fromkeys(heads, bool(normalize))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = next(self.parameters()).dtype
        if images.dtype != dtype and not torch.is_autocast_enabled(images.device.type):  # float64 model: train.dtype
            images = images.to(dtype)
        features = self.backbone(images)
        return self.embed_features(features)

    def embed_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Apply the heads to already pooled backbone features."""
        out = {}
        for name, head in self.heads.items():
            z = head(features)
            out[name] = F.normalize(z, dim=1) if self.normalize[name] else z
        return out


def build_embedder(
    cfg, in_channels: int, *, heads: dict[str, int] | None = None, load_pretrained: bool = True
) -> Embedder:
    """The run's model from its config (``model`` and ``augment.size`` sections); ``load_pretrained=False`` skips the
    ImageNet / local backbone weights (when a checkpoint is about to overwrite them anyway)."""
    from .backbones import build_backbone

    m = cfg.model
    backbone = build_backbone(
        m.backbone, in_channels=in_channels, pooling=m.pooling, freeze_bn=m.freeze_bn,
        pretrained=m.pretrained and load_pretrained, weights=m.weights if load_pretrained else None,
        width=m.width, blocks=tuple(m.blocks), input_size=cfg.augment.size, trainable_blocks=m.trainable_blocks,
        channels_last=m.channels_last,
    )  # fmt: skip
    return Embedder(backbone, heads or {"embedding": m.embedding_dim}, normalize=m.normalize)

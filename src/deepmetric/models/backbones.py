"""Backbones: convolutional trunks that map images to pooled feature vectors (B × out_features).

- ``small_cnn``: five 3 × 3 conv layers with BatchNorm for 28 × 28 inputs (Fashion-MNIST, MNIST-like).
- ``small_resnet``: a ResNet (He et al. 2016) with basic blocks for 32–64 px inputs, no stem pooling.
- ``timm:<name>``: any timm model as a trunk (optional dependency ``deepmetric[timm]``), ImageNet weights from the
  hub (``pretrained: true``) or from a local file (``weights: PATH``).

Every backbone has the DML options: ``pooling`` (``avg``, ``max``, ``avg+max`` (the sum of both, as in
Roth et al. 2020), or ``flatten``, which keeps the spatial layout of small inputs and needs ``input_size``),
``freeze_bn`` (BatchNorm running statistics frozen in training, affine parameters still
trained), and ``weights`` (a local state-dict file loaded strictly, with a clear error on any mismatch).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

POOLINGS = ("avg", "max", "avg+max", "flatten")


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Sequential):
    """Five conv-BN-ReLU layers (widths w, w, 2w, 2w, 4w) with two 2 × 2 max-pools: 28 × 28 → 7 × 7 × 4w."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__(
            conv_bn_relu(in_channels, width),
            conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
        )
        self.out_features = 4 * width


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Sequential):
    """3 × 3 stem, then stages of ``blocks`` basic blocks at widths w, 2w, 4w, 8w (stride 2 from the second)."""

    def __init__(self, in_channels: int = 3, width: int = 32, blocks: tuple[int, ...] = (1, 1, 1, 1)):
        layers: list[nn.Module] = [conv_bn_relu(in_channels, width)]
        c = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(c, c_out, stride=2 if i > 0 and j == 0 else 1))
                c = c_out
        super().__init__(*layers)
        self.out_features = c


class TimmTrunk(nn.Module):
    """A timm model without its classifier and pooling: returns the last feature map."""

    def __init__(self, name: str, in_channels: int = 3, pretrained: bool = False):
        super().__init__()
        try:
            import timm
        except ImportError as e:  # torchvision/timm on PyPI are CUDA builds; optional by design
            raise ImportError(
                f"backbone 'timm:{name}' needs timm: pip install 'deepmetric[timm]' (on a machine whose torch build "
                "matches timm's torchvision dependency)"
            ) from e
        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            raise ValueError(f"unknown timm model {name!r}; closest: {close}")
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", in_chans=in_channels)
        self.out_features = self.model.num_features

    def forward(self, x):
        return self.model.forward_features(x)


class Backbone(nn.Module):
    """A trunk followed by global pooling: images (B × C × H × W) → features (B × out_features)."""

    def __init__(self, trunk: nn.Module, pooling: str = "avg", freeze_bn: bool = False,
                 input_shape: tuple[int, int, int] | None = None):  # fmt: skip
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.trunk, self.pooling, self.freeze_bn = trunk, pooling, freeze_bn
        self.out_features = trunk.out_features
        if pooling == "flatten":
            if input_shape is None:
                raise ValueError("pooling='flatten' needs the input shape (channels, height, width)")
            with torch.no_grad():
                was = trunk.training
                trunk.eval()
                self.out_features = trunk(torch.zeros(1, *input_shape)).flatten(1).shape[1]
                trunk.train(was)
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(x)
        if fmap.dim() == 2:
            return fmap
        if self.pooling == "avg":
            return fmap.mean(dim=(2, 3))
        if self.pooling == "max":
            return fmap.amax(dim=(2, 3))
        if self.pooling == "flatten":
            return fmap.flatten(1)
        return fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3))

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but BatchNorm layers stay in eval mode (frozen statistics) when ``freeze_bn``."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict from a local file into ``module``, strictly.

    Accepts a bare state dict or a checkpoint holding one under ``state_dict`` or ``model``; strips a leading
    ``module.`` (DataParallel) prefix. Any missing, unexpected or mis-shaped key is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read backbone weights {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ValueError(
            f"backbone weights {path} do not fit the model: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:3]}"
        )
    module.load_state_dict(state)


BACKBONES = ("small_cnn", "small_resnet", "timm:<name>")


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    pooling: str = "avg",
    freeze_bn: bool = False,
    pretrained: bool = False,
    weights: str | None = None,
    width: int = 32,
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    input_size: int | None = None,
) -> Backbone:
    """Build a backbone by name (``small_cnn``, ``small_resnet`` or ``timm:<model>``)."""
    if name == "small_cnn":
        trunk = SmallCNN(in_channels, width)
    elif name == "small_resnet":
        trunk = SmallResNet(in_channels, width, tuple(blocks))
    elif name.startswith("timm:"):
        trunk = TimmTrunk(name.split(":", 1)[1], in_channels, pretrained=pretrained and weights is None)
    else:
        close = difflib.get_close_matches(name, ["small_cnn", "small_resnet", "timm:"], n=3)
        raise ValueError(f"unknown backbone {name!r}; valid: {list(BACKBONES)}; closest: {close}")
    if pretrained and not name.startswith("timm:") and weights is None:
        raise ValueError(f"backbone {name!r} has no hub weights; give weights=PATH to a local state-dict file")
    if weights:  # a timm checkpoint holds the timm model's own keys, not the adapter's
        load_weights(trunk.model if isinstance(trunk, TimmTrunk) else trunk, weights)
    shape = (in_channels, input_size, input_size) if input_size else None
    return Backbone(trunk, pooling=pooling, freeze_bn=freeze_bn, input_shape=shape)

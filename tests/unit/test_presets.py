"""Every preset in configs/ loads, builds its method (no data needed) and takes one training step, in milliseconds:
the backbone is swapped for a tiny CNN (the presets' ResNet-50 / EfficientNet trunks are tested elsewhere), the
method, its options, loss, miner, memory, heads and optimizer groups are the preset's own (a memory without its
warm-up, so that the step uses it)."""

import time
from pathlib import Path

import pytest
import torch

from deepmetric.config import load_config
from deepmetric.run import build_method
from deepmetric.training.optim import build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_"))
TINY = ["model.backbone=small_cnn", "model.width=4", "model.pretrained=false", "model.trainable_blocks=null",
        "model.pooling=avg", "model.channels_last=false", "memory.warmup_steps=0"]  # fmt: skip


def test_there_are_presets():
    assert len(PRESETS) > 60


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_preset_builds_and_steps(preset):
    cfg = load_config(preset, TINY)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    method = build_method(cfg, in_channels=3, num_classes=4, load_pretrained=False)
    optimizer = build_optimizer(cfg.optim, method.param_groups(cfg.optim.lr, cfg.optim.weight_decay,
                                                               cfg.optim.head_lr_mult))  # fmt: skip
    labels = torch.arange(4).repeat_interleave(4)
    views = [torch.randn(16, 3, 32, 32) for _ in range(method.num_views)]
    parts = method.training_step({"views": views, "label": labels, "index": torch.arange(16)})
    optimizer.zero_grad()
    parts["loss"].backward()
    optimizer.step()
    method.on_step_end(1)
    assert torch.isfinite(parts["loss"]), parts
    assert ("memory_loss" in parts) == bool(cfg.memory.size), parts
    assert time.perf_counter() - t0 < 5.0  # milliseconds on any machine; seconds only under heavy load

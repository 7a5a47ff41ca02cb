"""The pretrained-trunk regime of the method studies (``--regime pretrained``, issue 18): the papers' own setting.

Every run of a study, the method and its baseline alike, starts from the ImageNet-pretrained EfficientNet-Lite0 with
the recipe of ``configs/demo.yaml``: 64 px (the 28 / 32 px images upsampled), the last 11 MBConv blocks and the head
conv trained with frozen BatchNorm statistics, channels-last, average pooling, AdamW 3e-4 (heads × 3.3), constant
learning rate, batches of 128, the same step budget; each loss keeps its preset's own settings (margins, β and proxy
learning-rate multipliers). The checkpoint is chosen on a class-disjoint validation split (training classes held
out, seeded by the run seed), never on test; DiVA's head weights likewise (benchmarks/diva.py).

Augmentation (the demo has none; DiVA's self-similarity task needs two views that differ), the same for every run of
a dataset: the glyphs are decoded at 64 px and shifted by up to 4 px (the from-scratch studies' 2 px at 32), never
flipped; Fashion-MNIST takes random resized crops of 80–100 % of the image and flips, as natural images do.

Data: the glyphs through ``--glyphs`` (a build in the glyph benchmark's layout; ``benchmarks/carry.py`` writes one
from the project's glyph dataset) and Fashion-MNIST zero-shot (classes 0–4 train, 5–9 test), whose five training
classes leave 3 to train on when 2 are held out for validation (batches of 3 classes × 42).
"""

from __future__ import annotations

TRUNK = {  # configs/demo.yaml: network, input and optimiser
    "model__backbone": "efficientnet_lite0", "model__pretrained": True, "model__trainable_blocks": 11,
    "model__freeze_bn": True, "model__channels_last": True, "model__pooling": "avg",
    "augment__eval": "none", "augment__size": 64, "augment__normalization": "auto",
    "optim__name": "adamw", "optim__lr": 3e-4, "optim__weight_decay": 1e-4, "optim__head_lr_mult": 3.3,
    "schedule__name": "none", "schedule__warmup_steps": 0,
    "data__eval_batch_size": 256, "train__epochs": 1000, "train__log_every": 25,
    "protocol__val_by": "classes", "protocol__n_folds": 0, "report__enabled": False,
    "train__baseline": False,  # scored in the reference runs only (REFERENCE): 1,280-d pooled features cost CPU time
}  # fmt: skip
REFERENCE = {"train__baseline": True}  # the runs whose step-0 scores give a table's "no DML training" rows
INPUT = {  # per dataset: what a batch looks like
    "glyphs": {"data__load_size": 64, "augment__train": "pad_crop", "augment__padding": 4, "augment__flip": False},
    "fmnist": {"data__name": "fashion_mnist", "protocol__name": "zero_shot", "protocol__val_classes": 2,
               "data__classes_per_batch": 3, "data__samples_per_class": 42, "train__select_metric": "map@r",
               "augment__train": "random_resized_crop", "augment__scale": "[0.8, 1.0]", "augment__flip": True},
}  # fmt: skip


def pretrained(dataset: str, steps: int, eval_every: int, batch: tuple[int, int] = (32, 4)) -> dict:
    """The regime's overrides for ``dataset`` (``glyphs`` or ``fmnist``) trained ``steps`` steps of ``batch``
    (classes, samples per class; Fashion-MNIST: 3 × 42) with a validation every ``eval_every`` steps."""
    return {**TRUNK, "train__max_steps": steps, "train__eval_every_steps": eval_every,
            "data__classes_per_batch": batch[0], "data__samples_per_class": batch[1], **INPUT[dataset]}  # fmt: skip


def check_protocol(regime: str, protocol: str, allowed: tuple[str, ...]) -> None:
    """Stop when ``protocol`` has no pretrained-regime form."""
    if regime == "pretrained" and protocol not in allowed:
        raise SystemExit(f"--regime pretrained runs the protocols {', '.join(allowed)}, not {protocol}")

"""Composed methods end to end on digits (docs/combining.md): a cross-batch memory with the standard method and with
CCP (EPS mining both its terms), EPS and a memory inside DiVA's tasks. Each trains, logs its memory's loss, and an
interrupted run resumed from its checkpoint ends with the same weights and the same queue as the run never
interrupted (the queue, its fill level, position and step count are in the checkpoint)."""

import json

import pytest
import torch

import deepmetric
from deepmetric.training.checkpoint import load_checkpoint

COMMON = {"train__max_steps": 16, "schedule__name": "none", "protocol__val_by": "none", "report__enabled": False,
          "train__log_every": 1, "eval__clustering": False}  # fmt: skip
# digits batches of 5 × 8 = 40: the memories fill from step 4 and wrap after step 6; the split at 9 is mid-queue
COMPOSED = {
    # PML's triplet loss and semi-hard miner (the conftest's), the miner's pairs with the own copy removed
    "standard_xbm": {"memory__size": 100, "memory__warmup_steps": 3},
    # EPS in both CCP terms, a memory for the in-batch term
    "ccp_eps_xbm": {"method__name": "ccp", "method__options": "{proxies_per_class: 2, pool_size: 3}",
                    "loss__name": "ccp_c2", "loss__params": "{}", "miner__name": "easy_positive",
                    "miner__params": "{negatives: all}", "memory__size": 100, "memory__warmup_steps": 3},
    # EPS as the discriminative task's miner, and its own memory
    "diva_eps_xbm": {"method__name": "diva", "model__embedding_dim": 16, "miner__name": "null",
                     "method__options": "{queue_size: 80, rho: 50.0, discriminative: {miner: easy_positive, "
                     "miner_params: {negatives: distance_weighted}, "
                     "memory: {size: 100, warmup_steps: 3}}}"},
}  # fmt: skip
MEMORY_PART = {"standard_xbm": "memory_loss", "ccp_eps_xbm": "memory_loss", "diva_eps_xbm": "discriminative_memory"}
MEMORY_KEY = {"standard_xbm": "memory.", "ccp_eps_xbm": "memory.", "diva_eps_xbm": "memories.discriminative."}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_composed_run_trains_and_resumes_exactly(name, digits_config, tmp_path):
    overrides = {**COMMON, **COMPOSED[name]}
    whole, metrics = deepmetric.train(digits_config, output=tmp_path / "whole", quiet=True, **overrides)
    log = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    memory = [r[MEMORY_PART[name]] for r in log if r["type"] == "train"]
    assert len(memory) == 16 and memory[:3] == [0, 0, 0] and all(v > 0 for v in memory[3:]), memory
    assert 0 < metrics["test"]["map@r"] <= 1

    split = tmp_path / "split"
    deepmetric.train(digits_config, output=split, quiet=True, **{**overrides, "train__max_steps": 9})
    _, resumed = deepmetric.train(resume=split, quiet=True, train__max_steps=16)
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["method"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["method"]
    assert a.keys() == b.keys()
    queue = [k for k in a if k.startswith(MEMORY_KEY[name])]
    assert len(queue) == 5 and int(a[f"{MEMORY_KEY[name]}filled"]) == 100 and int(a[f"{MEMORY_KEY[name]}steps"]) == 16
    for key in a:
        assert torch.equal(a[key], b[key]), (key, a[key], b[key])
    assert resumed["test"]["map@r"] == metrics["test"]["map@r"]

"""torchrun with 2 gloo processes trains the same model as 1 process on the same global batch (1 × 64 vs 2 × 32); with
a cross-batch memory, each rank's queue holds the gathered global batches, so the queues are equal too."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from deepmetric.training.checkpoint import load_checkpoint

BASE = """
name: ddp-test
data: {name: digits, classes_per_batch: 4, samples_per_class: 16, eval_batch_size: 512}
protocol: {name: zero_shot, val_by: none}
augment: {train: pad_crop, eval: none, size: 8, padding: 1, flip: true, normalization: gray}
model: {backbone: small_cnn, width: 8, embedding_dim: 16}
optim: {name: adam, lr: 0.001}
schedule: {name: none}
train: {max_steps: 20, log_every: 5, dtype: float64}
eval: {clustering: false}
report: {enabled: false}
"""
METHODS = {
    "triplet_semihard": "loss: {name: triplet_margin, params: {margin: 0.2}}\n"
    "miner: {name: triplet_margin, params: {margin: 0.2, type_of_triplets: semihard}}\n",
    "proxy_anchor": "loss: {name: proxy_anchor, params: {margin: 0.1, alpha: 32}, lr_mult: 10.0}\n",
    "diva": "method: {name: diva, options: {queue_size: 128, rho: 50.0}}\nloss: {name: triplet_margin, params: {}}\n",
    "ccp": "method: {name: ccp, options: {proxies_per_class: 2, pool_size: 5, stage_patience: 1, lam: 0.01}}\n"
    "loss: {name: margin_contrastive, params: {pos_margin: 0.0, neg_margin: 0.5}}\n",
    # XBM with EPS: on from step 5, the queue of 160 wraps at step 7 (batches of 64)
    "xbm_eps": "loss: {name: contrastive, params: {pos_margin: 0.0, neg_margin: 0.5}}\n"
    "miner: {name: easy_positive, params: {negatives: all}}\nmemory: {size: 160, warmup_steps: 4}\n",
}
# CCP needs validations for its stages: every 4 steps, with stage_patience 1, so stages change under DDP
EXTRA = {"ccp": ["protocol.val_by=images", "train.eval_every_steps=4"]}


# The runs train in float64 (train.dtype). Summing 64 rows at once and 2 × 32 rows then all-reducing round differently;
# in float32, Adam turns that noise in near-zero gradients into lr-sized steps and a semi-hard choice can flip on it,
# so float32 runs drift apart by 1e-6 to 2e-3 depending on the CPU. In float64 they agree to ~1e-13 after 20 steps,
# while a real fault (a rank's rows missing from the loss, different augmentation, sampling or CCP stages) moves
# weights by up to lr = 1e-3 per step.
TOLERANCE = 1e-8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}


def _train(config, run_dir, processes: int, *extra):
    # a resumed run continues with its own config.yaml: no config file with --resume
    where = [] if "--resume" in extra else [str(config), "--output", str(run_dir)]
    cli = ["-m", "deepmetric", "train", *where, "--quiet", *extra]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={_free_port()}", "--master_addr=127.0.0.1", *cli]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_same_state(a, b):
    sa, sb = load_checkpoint(a)["method"], load_checkpoint(b)["method"]
    assert sa.keys() == sb.keys()
    for key in sa:
        if torch.is_floating_point(sa[key]):
            assert torch.allclose(sa[key], sb[key], atol=TOLERANCE, rtol=0), (key, (sa[key] - sb[key]).abs().max())
        else:
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_train_the_same_model_as_one(method, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(BASE + METHODS[method])
    _train(config, tmp_path / "one", 1, *EXTRA.get(method, []))
    _train(config, tmp_path / "two", 2, *EXTRA.get(method, []))
    _assert_same_state(tmp_path / "one" / "checkpoints" / "last.pt", tmp_path / "two" / "checkpoints" / "last.pt")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["test"]["map@r"] == pytest.approx(one["test"]["map@r"], abs=1e-4)
    assert (tmp_path / "two" / "log.jsonl").read_text().count('"step": 5,') == 1  # rank 0 alone writes the log


def test_resume_under_two_processes_matches_an_uninterrupted_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(BASE + METHODS["ccp"])
    _train(config, tmp_path / "whole", 2, *EXTRA["ccp"])
    _train(config, tmp_path / "split", 2, *EXTRA["ccp"], "train.max_steps=12")  # a validation step: no extra one
    _train(config, tmp_path / "split", 2, "--resume", str(tmp_path / "split"), "train.max_steps=20")
    _assert_same_state(tmp_path / "whole" / "checkpoints" / "last.pt", tmp_path / "split" / "checkpoints" / "last.pt")

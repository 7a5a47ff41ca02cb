"""The ccp method end to end on digits: stages happen, proxies are real sample embeddings, resume is exact; MLRC."""

import json

import pytest
import torch

import deepmetric
from deepmetric.config import load_config, parse_overrides
from deepmetric.training import Trainer
from deepmetric.training.mlrc import run_mlrc

CCP = {
    "method__name": "ccp",
    "method__options": "{proxies_per_class: 3, pool_size: 5, stage_patience: 1, lam: 0.01}",
    "loss__name": "margin_contrastive",
    "loss__params": "{pos_margin: 0.0, neg_margin: 0.5}",
    "miner__name": "null",
    "model__embedding_dim": 16,
    "train__eval_every_steps": 3,
    "train__epochs": 2,
    "schedule__name": "none",
    "eval__normalize": False,
    "report__enabled": False,
}


def _cfg(path, *extra):
    return load_config(path, [*parse_overrides(CCP), *extra])


def test_ccp_trains_through_stages_and_embeds_with_lipschitz_normalisation(digits_config, tmp_path):
    run_dir, metrics = deepmetric.train(digits_config, output=tmp_path / "ccp", quiet=True, **CCP)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert any(r["type"] == "ccp_stage" for r in records), "no stage change with stage_patience=1"
    train = [r for r in records if r["type"] == "train"]
    assert {"batch_loss", "proxy_loss", "proximal"} <= set(train[0])
    assert train[0]["proximal"] == 0 and any(r["proximal"] > 0 for r in train)  # λ = 0 only in the first stage
    assert metrics["test"]["recall@1"] > 0.4  # 5 unseen digits: chance is about 0.2
    emb = deepmetric.load(run_dir).embed(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert emb.shape == (4, 16) and (emb.norm(dim=1) <= 1 + 1e-5).all()


def test_proxies_are_sample_embeddings_right_after_initialisation(digits_config, tmp_path):
    trainer = Trainer(_cfg(digits_config), tmp_path / "init", quiet=True)
    method = trainer.method
    method.on_train_start(trainer.context)
    pool = method.candidate_pool(trainer.context, per_class=5)  # the same seeded draw: the pool the proxies came from
    for c in range(method.num_classes):
        for proxy in method.bank.proxies[c]:
            assert (pool[c] - proxy).abs().amax(dim=1).min() < 1e-6
    # and each class's proxies were picked from that class's own candidates, all distinct
    assert len({tuple(p.tolist()) for p in method.bank.proxies.reshape(-1, 16)}) == method.num_classes * 3


def test_ccp_resume_mid_stage_is_exact(digits_config, tmp_path, monkeypatch):
    whole = Trainer(_cfg(digits_config), tmp_path / "whole", quiet=True)
    expected = whole.fit()
    records = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    first_stage = min(r["step"] for r in records if r["type"] == "ccp_stage")
    stop_at = first_stage + 2  # inside stage 1: θ̄ set, proximal term on, proxies re-initialised
    interrupted = Trainer(_cfg(digits_config, "train.checkpoint_every=1"), tmp_path / "split", quiet=True)

    def crash(step):
        if step == stop_at:
            raise KeyboardInterrupt

    interrupted.method.on_step_end = crash
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = Trainer(_cfg(digits_config), tmp_path / "split", resume=True, quiet=True)
    assert resumed.step == stop_at - 1 and int(resumed.method.stage) >= 1
    got = resumed.fit()
    assert got["steps"] == expected["steps"]
    for key, value in expected["test"].items():
        assert got["test"][key] == pytest.approx(value, abs=1e-6), key


def test_mlrc_runs_every_fold_and_reports_mean_and_concatenation(digits_config, tmp_path):
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in CCP.items()]
    overrides += [
        "protocol.train_classes=[0,1,2,3,4,5,6,7]",
        "protocol.test_classes=[8,9]",
        "train.epochs=1",
        "data.classes_per_batch=4",
    ]
    summary = run_mlrc(digits_config, tmp_path / "mlrc", overrides, folds=2, quiet=True)
    assert len(summary["models"]) == 2 and summary["dims"] == {"single": 16, "concatenated": 32}
    for fold in (0, 1):
        splits = json.loads((tmp_path / "mlrc" / f"fold{fold}" / "metrics.json").read_text())["splits"]
        assert splits  # each fold validated on its own held-out classes
    for key in ("precision@1", "r_precision", "map@r"):
        values = [m[key] for m in summary["models"]]
        assert summary["mean"][key] == pytest.approx(sum(values) / 2)
        assert 0 < summary["concatenated"][key] <= 1
    assert "concatenated (32-d)" in (tmp_path / "mlrc" / "mlrc.md").read_text()
    again = run_mlrc(digits_config, tmp_path / "mlrc", overrides, folds=2, quiet=True)  # finished folds are reused
    assert again["models"] == summary["models"]

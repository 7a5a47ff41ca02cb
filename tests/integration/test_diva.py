"""The diva method end to end on digits: it trains, embeds with the weighted concatenation, and resumes exactly."""

import pytest
import torch

import deepmetric
from deepmetric.config import load_config, parse_overrides
from deepmetric.run import build_method

DIVA = {
    "method__name": "diva",
    "method__options": "{queue_size: 80, rho: 50.0, alpha_ssl: 0.3, test_weights: {discriminative: 0.5}}",
    "model__embedding_dim": 16,
    "data__samples_per_class": 4,
    "augment__train": "pad_crop",
    "train__epochs": 2,
    "protocol__val_by": "none",
    "schedule__name": "none",
    "report__enabled": False,
}


def test_diva_trains_and_reports_every_loss_part(digits_config, tmp_path):
    run_dir, metrics = deepmetric.train(digits_config, output=tmp_path / "diva", quiet=True, **DIVA)
    log = (run_dir / "log.jsonl").read_text()
    for part in ("discriminative", "shared", "intra", "dance", "decorrelation"):
        assert f'"{part}"' in log
    assert metrics["test"]["recall@1"] > 0.4  # 5 unseen digits: chance is about 0.2
    for head in ("discriminative", "selfsimilarity", "shared", "intra"):  # each head alone, beside the combination
        assert 0 < metrics["test"][f"{head}/map@r"] <= 1
    model = deepmetric.load(run_dir)
    emb = model.embed(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))
    assert emb.shape == (3, 64) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_weighted_concatenation_equals_weighted_head_distances(digits_config):
    cfg = load_config(digits_config, parse_overrides(DIVA))
    method = build_method(cfg, in_channels=1, num_classes=5).eval()  # the method alone: no data, no run directory
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        e = method.embed(x)
        heads = method.embed_heads(x)
    w = method.test_weights
    total = sum(w[h] ** 2 for h in heads)
    expected = sum(w[h] ** 2 * torch.cdist(heads[h], heads[h]).pow(2) for h in heads) / total
    assert torch.allclose(torch.cdist(e, e).pow(2), expected, atol=1e-5)


def test_diva_resume_is_exact(digits_config, tmp_path):
    _, whole = deepmetric.train(digits_config, output=tmp_path / "whole", quiet=True, **DIVA)
    first = tmp_path / "split"
    deepmetric.train(digits_config, output=first, quiet=True, **{**DIVA, "train__max_steps": 11})
    _, resumed = deepmetric.train(resume=first, quiet=True, train__max_steps="null")
    for key, value in whole["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6), key


def test_dance_signal_benchmark_reads_a_trained_run(digits_config, tmp_path, capsys):
    """benchmarks/dance_signal.py on a short digits run: every column, finite, within its range."""
    from benchmarks import dance_signal

    run_dir, _ = deepmetric.train(digits_config, output=tmp_path / "diva", quiet=True,
                                  **{**DIVA, "train__max_steps": 8})  # fmt: skip
    values = dance_signal.signal_of(run_dir, batches=2)
    assert -1 <= values["s+"] <= 1 and 0 <= values["close"] <= 80
    for weighting in ("fixed", "legacy", "none"):
        assert values[f"{weighting} loss"] >= 0 and values[f"{weighting} |grad|"] >= 0
        assert abs(values[f"{weighting} max ωs"]) <= 1
    dance_signal.main([str(run_dir), "--batches", "1", "--write", str(tmp_path / "out.md")])
    table = (tmp_path / "out.md").read_text()
    assert f"| {run_dir} | " in table and "| fixed loss |" in table
    other, _ = deepmetric.train(digits_config, output=tmp_path / "margin", quiet=True, train__max_steps=2,
                                report__enabled=False)  # fmt: skip
    with pytest.raises(SystemExit, match=r"margin: method\.name is 'standard'; this study reads DiVA runs only"):
        dance_signal.signal_of(other, batches=1)

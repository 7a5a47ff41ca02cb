"""Methods that compose, by config (docs/combining.md): a cross-batch memory with the standard method (EPS included),
DiVA's tasks and CCP's in-batch term; EPS as the miner of DiVA's discriminative task and of CCP's loss. Typed and
checked when the config loads, with errors that name the key and say what to do; a config without them builds the
method it built before (no new state-dict keys)."""

import pytest
import torch

from deepmetric.config import ConfigError, MemoryConfig, load_config
from deepmetric.losses import CrossBatchMemory
from deepmetric.methods import METHODS, Method, method_options
from deepmetric.methods.diva import TaskOptions
from deepmetric.miners import DistanceWeightedTripletMiner, EasyPositiveMiner
from deepmetric.run import build_method

SMALL = ["model.width=4", "model.embedding_dim=8", "data.classes_per_batch=4", "data.samples_per_class=4"]
CCP = ["method.name=ccp", "loss.name=ccp_c2", "method.options.proxies_per_class=2"]


def load(*overrides):
    return load_config(None, [*SMALL, *overrides])


def step(method, steps=3, seed=0):
    """``steps`` training steps of 4 classes × 4 (no optimiser: the memory and the parts are what is checked)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(4)
    for i in range(steps):
        views = [torch.randn(16, 1, 16, 16, generator=g) for _ in range(method.num_views)]
        parts = method.training_step({"views": views, "label": labels, "index": torch.arange(16)})
        parts["loss"].backward()
        method.on_step_end(i + 1)
    return parts


def test_memory_is_typed_and_its_values_checked_at_load_time():
    cfg = load("memory.size=64", "memory.warmup_steps=10")
    assert cfg.memory == MemoryConfig(size=64, warmup_steps=10)
    with pytest.raises(ConfigError, match=r"memory\.size=8 is smaller than the global batch .* = 16.*size ≥ 16"):
        load("memory.size=8")
    with pytest.raises(ConfigError, match=r"memory\.warmup_steps.*must be ≥ 0"):
        load("memory.size=64", "memory.warmup_steps=-1")
    with pytest.raises(ConfigError, match=r"memory\.weight=0 switches the memory's loss off; set memory\.size=0"):
        load("memory.size=64", "memory.weight=0")
    with pytest.raises(ConfigError, match=r"invalid config key 'memory\.sise'"):
        load("memory.sise=64")


def test_memory_with_a_proxy_loss_is_an_error_naming_both_keys():
    with pytest.raises(ConfigError, match=r"memory\.size: loss\.name='proxy_anchor' \(ProxyAnchorLoss\) is not a "
                       r"pair-based loss.*or set memory\.size=0"):  # fmt: skip
        load("loss.name=proxy_anchor", "memory.size=64")
    with pytest.raises(ConfigError, match=r"memory\.size: loss\.name='normalized_softmax'"):
        load("loss.name=normalized_softmax", "memory.size=64")


def test_standard_with_a_memory_keeps_its_queue_in_the_state_dict():
    cfg = load("loss.name=contrastive", "memory.size=40", "memory.warmup_steps=1")
    method = build_method(cfg, in_channels=1, num_classes=4)
    assert isinstance(method.memory, CrossBatchMemory) and method.memory.size == 40
    assert {k for k in method.state_dict() if k.startswith("memory.")} == {
        "memory.embeddings", "memory.labels", "memory.filled", "memory.position", "memory.steps"}  # fmt: skip
    parts = step(method, steps=3)
    assert set(parts) == {"loss", "batch_loss", "memory_loss"} and parts["memory_loss"] > 0
    assert method.memory.held == 32 and int(method.memory.steps) == 3  # steps 2 and 3 filled it


def test_eps_with_a_memory_in_the_standard_method():
    cfg = load("loss.name=contrastive", "miner.name=easy_positive", "miner.params={negatives: all}", "memory.size=48")
    method = build_method(cfg, in_channels=1, num_classes=4)
    assert isinstance(method.miner, EasyPositiveMiner)
    parts = step(method)
    assert torch.isfinite(parts["loss"]) and method.memory.held == 48


def test_without_memory_or_composition_nothing_changes():
    for overrides in ([], CCP, ["method.name=diva"]):
        method = build_method(load(*overrides), in_channels=1, num_classes=4)
        assert not any("memory" in k or "memories" in k for k in method.state_dict()), overrides
        assert "memory_loss" not in step(method, steps=1)
    diva = build_method(load("method.name=diva"), in_channels=1, num_classes=4)
    assert isinstance(diva.miners["discriminative"], DistanceWeightedTripletMiner)


def test_diva_takes_eps_and_a_memory_per_task():
    task = "{miner: easy_positive, miner_params: {negatives: distance_weighted}, memory: {size: 32}}"
    cfg = load("method.name=diva", f"method.options.discriminative={task}", "method.options.intra.memory.size=16")
    options = method_options(cfg)
    assert options.discriminative == TaskOptions("easy_positive", {"negatives": "distance_weighted"}, MemoryConfig(32))
    assert options.shared == TaskOptions() and options.intra.memory.size == 16
    method = build_method(cfg, in_channels=1, num_classes=4)
    assert isinstance(method.miners["discriminative"], EasyPositiveMiner)
    assert method.miners["discriminative"].negatives == "distance_weighted"
    assert set(method.memories) == {"discriminative", "intra"}
    assert "memories.discriminative.embeddings" in method.state_dict()
    parts = step(method)
    assert {"discriminative_memory", "intra_memory"} <= set(parts) and "shared_memory" not in parts
    assert torch.isfinite(parts["loss"]) and method.memories["intra"].held == 16


def test_diva_composition_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"memory\.size=64: method 'diva' .* set method\.options\.discriminative\."
                       r"memory\.size .* and memory\.size=0"):  # fmt: skip
        load("method.name=diva", "memory.size=64")
    with pytest.raises(ConfigError, match=r"shared\.miner='easy_positive': the shared task's miner is what defines"):
        load("method.name=diva", "method.options.shared.miner=easy_positive")
    with pytest.raises(ConfigError, match=r"unknown miner 'easy_positiv'.*'easypositive'"):
        load("method.name=diva", "method.options.discriminative.miner=easy_positiv")
    with pytest.raises(ConfigError, match=r"method\.options\.intra\.memory\.size=8 is smaller than the global batch"):
        load("method.name=diva", "method.options.intra.memory.size=8")
    with pytest.raises(ConfigError, match=r"method\.options\.discriminative\.memroy"):
        load("method.name=diva", "method.options.discriminative.memroy.size=8")


def test_ccp_takes_eps_for_both_terms_and_a_memory_for_the_batch_term():
    cfg = load(*CCP, "miner.name=easy_positive", "miner.params={negatives: all}", "memory.size=32")
    method = build_method(cfg, in_channels=1, num_classes=4)
    assert isinstance(method.miner, EasyPositiveMiner) and method.memory.size == 32
    with torch.no_grad():
        method.bank.proxies.normal_()
    parts = step(method)
    assert {"batch_loss", "proxy_loss", "memory_loss"} <= set(parts) and torch.isfinite(parts["loss"])
    assert "memory.embeddings" in method.state_dict()


def test_ccp_with_a_proxy_loss_is_an_error():
    with pytest.raises(ConfigError, match=r"loss\.name='proxy_anchor' \(ProxyAnchorLoss\): method 'ccp' uses its loss "
                       "in proxy form"):  # fmt: skip
        load("method.name=ccp", "loss.name=proxy_anchor")


def test_a_method_without_a_pair_loss_refuses_a_memory(monkeypatch):
    class Plain(Method):
        pass

    monkeypatch.setitem(METHODS, "plain", Plain)
    with pytest.raises(ConfigError, match=r"memory\.size=64: method 'plain' has no pair loss .* set memory\.size=0"):
        load("method.name=plain", "memory.size=64")
    load("method.name=plain")


def test_a_memory_in_warm_up_trains_exactly_as_no_memory():
    """Until ``warmup_steps`` the loss is ℓ(B, B) alone: the same numbers as a run without a memory."""
    plain = load("loss.name=contrastive", "miner.name=easy_positive")
    warm = load("loss.name=contrastive", "miner.name=easy_positive", "memory.size=32", "memory.warmup_steps=5")
    torch.manual_seed(0)
    a = build_method(plain, in_channels=1, num_classes=4)
    torch.manual_seed(0)
    b = build_method(warm, in_channels=1, num_classes=4)
    pa, pb = step(a), step(b)
    assert pa["loss"].item() == pb["loss"].item() == pb["batch_loss"].item() and pb["memory_loss"].item() == 0
    assert b.memory.held == 0

"""The Method seam from both sides: what methods declare (options, heads, evaluation normalisation), that nothing
outside ``methods/`` names a method or probes one, and that no host sync sits in a training step."""

import ast
import re
from pathlib import Path

import pytest
import torch

from deepmetric.config import ConfigError, load_config
from deepmetric.methods import METHODS, Method, method_heads, method_options
from deepmetric.methods.ccp import CCPOptions
from deepmetric.methods.diva import DivaOptions
from deepmetric.run import build_method

SRC = Path(__file__).resolve().parents[3] / "src" / "deepmetric"


def test_every_method_declares_typed_options_heads_and_normalisation():
    assert set(METHODS.names()) == {"standard", "diva", "ccp"}
    for name, cls in METHODS.items():
        assert issubclass(cls, Method)
        cfg = load_config(None, [f"method.name={name}"])
        heads = method_heads(cfg)
        assert heads and all(d == cfg.model.embedding_dim for d in heads.values())
        assert isinstance(cls.normalize_embeddings, bool)
        assert type(method_options(cfg)) is cls.Options
    assert METHODS.get("ccp").normalize_embeddings is False  # ranked on v / max(1, ‖v‖), not re-normalised


def test_options_are_typed_at_load_time():
    cfg = load_config(None, ["method.name=diva", "method.options.rho=6", "method.options.test_weights={intra: 0.5}"])
    options = method_options(cfg)
    assert isinstance(options, DivaOptions) and options.rho == 6.0 and options.test_weights == {"intra": 0.5}
    cfg = load_config(None, ["method.name=ccp", "method.options.proxies_per_class=3"])
    assert method_options(cfg) == CCPOptions(proxies_per_class=3)
    with pytest.raises(ConfigError, match=r"method\.options\.proxies: unknown option.*'proxies_per_class'"):
        load_config(None, ["method.name=ccp", "method.options.proxies=3"])
    with pytest.raises(ConfigError, match=r"test_weights name unknown head"):
        load_config(None, ["method.name=diva", "method.options.test_weights={tail: 1}"])
    with pytest.raises(ConfigError, match=r"takes no options"):
        load_config(None, ["method.name=standard", "method.options.rho=1"])


@pytest.mark.parametrize("method", ["standard", "ccp"])
def test_unknown_loss_and_miner_names_are_refused_at_load_time(method):
    with pytest.raises(ConfigError, match=r"loss\.name='triplett_margin': unknown loss .*closest: \['tripletmargin'"):
        load_config(None, [f"method.name={method}", "loss.name=triplett_margin"])
    with pytest.raises(ConfigError, match=r"miner\.name='multisimilarit': unknown miner .*'multisimilarity'"):
        load_config(None, [f"method.name={method}", "loss.name=contrastive", "miner.name=multisimilarit"])


def test_a_method_builds_without_data():
    cfg = load_config(None, ["method.name=diva", "model.embedding_dim=8", "model.width=4", "augment.size=28"])
    method = build_method(cfg, in_channels=1, num_classes=3)
    embedding, heads = method.eval().test_embedding(torch.rand(2, 1, 28, 28))
    assert embedding.shape == (2, 32) and set(heads) == {"discriminative", "selfsimilarity", "shared", "intra"}
    standard = build_method(load_config(None, ["model.width=4"]), in_channels=1, num_classes=3)
    assert standard.eval().test_embedding(torch.rand(2, 1, 28, 28))[1] == {}


def _outside_methods():
    for path in SRC.rglob("*.py"):
        if "methods" not in path.relative_to(SRC).parts:
            yield path, path.read_text()


def test_nothing_outside_methods_names_a_method_or_probes_one():
    names = "|".join(METHODS.names())
    for path, text in _outside_methods():
        assert "hasattr(method" not in text and "hasattr(self.method" not in text, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in node.comparators if isinstance(c, ast.Constant)]
                if any(isinstance(v, str) and re.fullmatch(names, v) for v in constants):
                    raise AssertionError(f"{path}:{node.lineno} compares with a method name")
        assert not re.search(r"\b(DivaMethod|CCPMethod|StandardMethod)\b", text), path


def test_no_host_sync_in_the_training_step_of_the_methods():
    """``int(buffer)`` / ``bool(tensor)`` / ``.item()`` inside ``training_step`` would stall a GPU every step."""
    for path in (SRC / "methods").glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.name in ("training_step", "forward"):
                source = ast.get_source_segment(path.read_text(), fn)
                assert not re.search(r"\b(int|bool|float)\(self\.|\.item\(\)", source), f"{path}:{fn.name}"

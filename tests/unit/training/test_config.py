"""Config loading: layers, overrides, and errors that name the full key and value."""

import pytest

from deepmetric.config import ConfigError, load_config


def test_defaults_yaml_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 5}\nloss: {name: contrastive}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\ntrain: {seed: 3}\n")
    cfg = load_config(tmp_path / "run.yaml", ["train.epochs=7", "loss.params.margin=0.3"])
    assert cfg.train.epochs == 7 and cfg.train.seed == 3 and cfg.loss.name == "contrastive"
    assert cfg.loss.params == {"margin": 0.3} and cfg.data.name == "fashion_mnist"
    assert load_config(overrides={"model": {"embedding_dim": 64}}).model.embedding_dim == 64


def test_repository_presets_load():
    from pathlib import Path

    root = Path(__file__).parents[3] / "configs"
    presets = sorted(p for p in root.rglob("*.yaml") if not p.name.startswith("_"))
    assert len(presets) >= 8
    for p in presets:
        load_config(p)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.epoch=3"], r"'train\.epoch'.*did you mean train\.epochs"),
        (["train.epochs=three"], r"'train\.epochs'.*'three'"),
        (["optim.name=adamax"], r"optim\.name: unknown optimizer 'adamax'; did you mean \['adam'"),
        (["schedule.name=cosin"], r"schedule\.name: unknown schedule 'cosin'; did you mean \['cosine'\]"),
        (["model.backbone=efficientnet_lite3"], r"model\.backbone: unknown backbone 'efficientnet_lite3'"),
        (["method.name=eps"], r"unknown method 'eps'"),
        (["method.name=diva", "method.options.rhoo=1"], r"method\.options\.rhoo: unknown option.*did you mean 'rho'"),
        (["method.name=ccp", "method.options.lam=big"], r"method\.options\.lam: .*'big'"),
        (["method.name=ccp", "method.options.pool_size=0"], r"pool_size.*must be ≥ 1"),
        (["train.checkpoint_every=0"], r"train\.checkpoint_every=0 must be ≥ 1"),
        (["data.classes_per_batch=0"], r"data\.classes_per_batch=0 must be ≥ 1"),
        (["optim.lr=-1"], r"optim\.lr=-1\.0 must be > 0"),
        (["trian.epochs=1"], r"'trian'"),
        (["train.dtype=float16"], r"train\.dtype='float16' is not one of"),
        (["train.dtype=float64", "train.amp=true"], r"exclude each other"),
    ],
)
def test_errors_name_key_and_value(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_unknown_key_gives_one_suggestion_with_full_keys():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["train.epochz=3"])
    assert str(info.value).lower().count("did you mean") == 1
    assert "did you mean train.epochs" in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "typo.yaml").write_text("model: {embeding_dim: 3}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*model\.embeding_dim.*model\.embedding_dim"):
        load_config(tmp_path / "typo.yaml")


def test_argument_dicts_are_replaced_by_a_layer_but_edited_by_dotted_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("loss: {name: margin, params: {margin: 0.2, beta: 1.2}}\n")
    (tmp_path / "triplet.yaml").write_text("base: base.yaml\nloss: {name: triplet_margin, params: {margin: 0.1}}\n")
    cfg = load_config(tmp_path / "triplet.yaml")
    assert cfg.loss.params == {"margin": 0.1}  # no beta leaking from the base's margin loss
    assert load_config(tmp_path / "base.yaml", ["loss.params.margin=0.3"]).loss.params == {"margin": 0.3, "beta": 1.2}
    assert load_config(tmp_path / "base.yaml", ["loss.params={nu: 0.1}"]).loss.params == {"nu": 0.1}


def test_every_preset_builds_its_loss_and_miner():
    from pathlib import Path

    from deepmetric.registry import build_loss, build_miner

    for p in sorted((Path(__file__).parents[3] / "configs").rglob("*.yaml")):
        if p.name.startswith("_"):
            continue
        cfg = load_config(p)
        build_loss(cfg.loss.name, cfg.loss.params, num_classes=5, embedding_size=cfg.model.embedding_dim)
        build_miner(cfg.miner.name, cfg.miner.params)

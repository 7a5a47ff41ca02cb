"""Registries: registration at the definition, lookups with the closest names, duplicates rejected, imports one way."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepmetric.choices import choices
from deepmetric.registry import (
    DATASETS,
    LOSSES,
    MINERS,
    Registry,
    UnknownNameError,
    available,
    build_loss,
    build_miner,
    resolve,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "deepmetric"


def test_register_get_names_contains():
    reg = Registry("widget")

    @reg.register("round", "circle")
    def round_widget():
        return "o"

    reg.register("square")(str)
    assert reg.get("round") is round_widget and reg["circle"] is round_widget and reg.get("square") is str
    assert reg.names() == ("round", "circle", "square") and list(reg) == list(reg.names()) and len(reg) == 3
    assert "round" in reg and "oval" not in reg and None not in reg
    assert reg.items() == [("round", round_widget), ("circle", round_widget), ("square", str)]
    assert reg.get("oval", None) is None


def test_unknown_names_suggest_the_closest():
    reg = Registry("widget")
    for name in ("round", "square", "triangle"):
        reg.register(name)(name)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'sqare'; did you mean \['square'\]\? valid: \[") as e:
        reg.get("sqare")
    assert isinstance(e.value, ValueError) and e.value.closest == ["square"] and e.value.kind == "widget"
    with pytest.raises(UnknownNameError, match=r"unknown widget 'hexagon'; valid: \['round', 'square', 'triangle'\]"):
        reg["hexagon"]
    with pytest.raises(UnknownNameError, match="unknown widget None"):
        reg.get(None)


def test_duplicates_are_rejected_also_after_normalisation():
    reg = Registry("widget", normalize=str.lower)
    reg.register("Round")(int)
    with pytest.raises(ValueError, match=r"widget 'ROUND' is registered twice: builtins.int and builtins.float"):
        reg.register("ROUND")(float)
    with pytest.raises(ValueError, match="registered twice"):
        LOSSES.register("diva_margin")(torch.nn.Identity)
    with pytest.raises(TypeError, match="non-empty names"):
        reg.register()


def test_prefixes_and_item_assignment():
    reg = Registry("backbone")
    reg.register("timm:", prefix=True)(dict)
    assert reg.get("timm:resnet18") is dict and "timm:anything" in reg and reg.names() == ("timm:<name>",)
    reg["extra"] = list  # a test's temporary entry (monkeypatch.setitem), replaced or deleted freely
    reg["extra"] = tuple
    assert reg["extra"] is tuple
    del reg["extra"]
    assert "extra" not in reg
    with pytest.raises(KeyError):
        del reg["extra"]


def test_locations_are_imported_before_the_first_lookup(tmp_path, monkeypatch):
    (tmp_path / "gadgets_for_test.py").write_text(
        "from test_registry_target import GADGETS\n\n@GADGETS.register('gear')\ndef gear():\n    return 1\n"
    )
    target = type(sys)("test_registry_target")
    target.GADGETS = Registry("gadget", locations=("gadgets_for_test",))
    monkeypatch.setitem(sys.modules, "test_registry_target", target)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gadgets_for_test", raising=False)
    assert "gadgets_for_test" not in sys.modules
    assert target.GADGETS.get("gear")() == 1 and "gadgets_for_test" in sys.modules


def test_losses_and_miners_keep_their_names_and_order():
    assert set(LOSSES.names()) == {"divamargin", "cosinecontrastive", "ccpc1", "margincontrastive", "ccpc2",
                                   "pairmultisimilarity", "ccpms", "alltripletsmargin", "ccptriplet"}  # fmt: skip
    assert set(MINERS.names()) == {"easypositive", "divadistanceweighted", "divashared", "divaintra"}
    assert resolve("loss", "DivaMarginLoss") is LOSSES.get("diva_margin")
    assert resolve("miner", "EasyPositive") is MINERS.get("easy-positive-miner")
    assert resolve("loss", "margin").__module__.startswith("pytorch_metric_learning")  # own first, then PML's
    assert {"divamargin", "tripletmargin"} <= set(available("loss"))
    with pytest.raises(UnknownNameError, match=r"unknown loss 'triplet_margn'; closest: \['tripletmargin'"):
        build_loss("triplet_margn", num_classes=2, embedding_size=4)
    with pytest.raises(UnknownNameError, match=r"unknown miner 'easy_positve'; closest: \['easypositive'"):
        build_miner("easy_positve")


def test_datasets_backbones_optimizers_schedules():
    from deepmetric.data import DATASETS as data_datasets
    from deepmetric.data import glyphs, load_dataset
    from deepmetric.models import BACKBONES, TRUNKS, build_backbone
    from deepmetric.training.optim import OPTIMIZERS, build_optimizer
    from deepmetric.training.schedule import SCHEDULES, LRSchedule

    assert data_datasets is DATASETS and DATASETS["glyphs"] is glyphs.load
    assert set(DATASETS) == {"fashion_mnist", "digits", "folder", "csv", "cub200", "cars196", "sop", "inshop", "glyphs"}
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'cub2000'; did you mean \['cub200'\]"):
        load_dataset("cub2000")
    assert BACKBONES == TRUNKS.names() == ("small_cnn", "small_resnet", "efficientnet_lite0", "efficientnet_lite1",
                                           "efficientnet_lite2", "timm:<name>")  # fmt: skip
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'small_resnt'; did you mean \['small_resnet'"):
        build_backbone("small_resnt")

    class Optim:
        lr, betas, weight_decay, momentum = 0.1, [0.8, 0.9], 0.01, 0.5

    params = [torch.nn.Parameter(torch.zeros(2))]
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                      ("rmsprop", torch.optim.RMSprop)):  # fmt: skip
        Optim.name = name
        opt = build_optimizer(Optim, [{"params": params, "lr": 0.2}])
        assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[0]["momentum"] == 0.5
    Optim.name = "adamx"  # once silently RMSprop
    with pytest.raises(UnknownNameError, match=r"unknown optimizer 'adamx'; did you mean \['adam', 'adamw'\]"):
        build_optimizer(Optim, [{"params": params}])
    assert OPTIMIZERS.names() == ("adam", "adamw", "sgd", "rmsprop")

    from deepmetric.config import ScheduleConfig

    assert SCHEDULES.names() == ("none", "step", "multistep", "cosine", "plateau")
    with pytest.raises(UnknownNameError, match=r"unknown schedule 'cosin'; did you mean \['cosine'\]"):
        LRSchedule(ScheduleConfig(name="cosin"), torch.optim.SGD(params, lr=1.0), 10)


def test_choices_come_from_the_registries():
    from deepmetric.models import TRUNKS

    got = choices()
    assert got["optim.name"] == ("adam", "adamw", "sgd", "rmsprop")
    assert got["schedule.name"] == ("none", "step", "multistep", "cosine", "plateau")
    assert set(got["data.name"]) == set(DATASETS.names())
    assert got["model.backbone"] == TRUNKS.names()
    assert all(isinstance(v, tuple) and all(isinstance(n, str) for n in v) for v in got.values())


def _deepmetric_imports(path: Path) -> set[str]:
    """The deepmetric modules a file imports at module level (absolute names)."""
    package = ["deepmetric", *path.relative_to(SRC).parts[:-1]]  # where a relative import starts
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            if base.startswith("deepmetric"):
                found.add(base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("deepmetric")}
    return found


def test_imports_go_one_way():
    assert _deepmetric_imports(SRC / "registry.py") == set()
    # a kind's modules import the registry, never their own package (whose __init__ imports them)
    for kind in ("losses", "miners", "data"):
        for path in (SRC / kind).glob("*.py"):
            if path.name != "__init__.py":
                assert f"deepmetric.{kind}" not in _deepmetric_imports(path), path
    # nothing below deepmetric.losses imports the miners
    for path in (SRC / "losses").glob("*.py"):
        assert not any(m.startswith("deepmetric.miners") for m in _deepmetric_imports(path)), path


def test_importing_the_registry_imports_no_other_deepmetric_module():
    code = (
        "import sys, deepmetric.registry as r\n"
        "print(sorted(m for m in sys.modules if m.startswith('deepmetric')))\n"
        "print(r.LOSSES.get('diva_margin').__name__, r.DATASETS.get('digits').__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "['deepmetric', 'deepmetric.registry']"
    assert out[1] == "DivaMarginLoss deepmetric.data.digits"  # the first lookup imports the definitions

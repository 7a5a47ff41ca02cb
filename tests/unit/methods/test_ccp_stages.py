"""CCP stage control driven by a scripted validation sequence (no data: the proxy selection is stubbed), through the
declared `MethodContext` alone."""

import numpy as np
import pytest
import torch

from deepmetric.losses import MarginContrastiveLoss
from deepmetric.methods import MethodContext
from deepmetric.methods.ccp import CCPMethod, pool_indices
from deepmetric.models import Embedder, build_backbone


class ScriptedContext(MethodContext):
    """A run context with an optimizer, a selection key and a record list; embedding images is not needed here."""

    def __init__(self, method):
        self.records = []

        def unused(*args, **kwargs):
            raise AssertionError("the stubbed proxy selection embeds nothing")

        super().__init__(optimizer=torch.optim.Adam(method.param_groups(1e-3, 0.0)), train_labels=np.zeros(0),
                         seed=0, select_key=lambda metrics: "map@r",
                         record=lambda record, text=None: self.records.append(record),
                         progress=lambda iterable, description: iterable, embed_training=unused)  # fmt: skip


def make_method(**options):
    torch.manual_seed(0)
    model = Embedder(build_backbone("small_cnn", in_channels=1, width=4), {"embedding": 6})
    method = CCPMethod(model, num_classes=3, loss=MarginContrastiveLoss(), proxies_per_class=2, pool_size=3, **options)
    calls = []

    def select(trainer, seeds):  # a stand-in for k-center over a real pool: a value per call, seeds recorded
        calls.append(None if seeds is None else seeds.clone())
        return torch.full((3, 2, 6), float(len(calls)))

    method.select_proxies = select
    return method, calls


def drive(method, values, trainer=None):
    trainer = trainer or ScriptedContext(method)
    method.on_train_start(trainer)
    stages = []
    for i, v in enumerate(values):
        trainer.step = i + 1
        with torch.no_grad():  # "training" between validations moves the weights
            for p in method.model.parameters():
                p.add_(0.01)
        method.on_validation_end({"map@r": v}, trainer)
        stages.append(int(method.stage))
    return trainer, stages


def test_a_stage_ends_after_stage_patience_evaluations_without_improvement():
    method, calls = make_method(stage_patience=2)
    _, stages = drive(method, [0.1, 0.2, 0.2, 0.15, 0.3, 0.31, 0.31, 0.31, 0.5])
    # best 0.2 at eval 2; evals 3, 4 do not improve → projection; the new stage's first value (0.3) is its best …
    assert stages == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert len(calls) == 3 and calls[0] is None  # stage 0 seeded with the origin, later stages with best proxies


def test_min_improvement_counts_tiny_gains_as_no_improvement():
    method, _ = make_method(stage_patience=1, min_improvement=0.01)
    _, stages = drive(method, [0.5, 0.505, 0.6])
    assert stages == [0, 1, 1]


def test_projection_anchors_the_proximal_term_at_the_stage_best_weights_and_seeds_with_the_best_proxies():
    method, calls = make_method(stage_patience=1, lam=0.5)
    trainer = ScriptedContext(method)
    method.on_train_start(trainer)
    params = method.proximal.params
    assert method.proximal().item() == 0  # λ = 0 in the first stage
    method.on_validation_end({"map@r": 0.4}, trainer)  # best: remember θ and the proxies now
    best = [p.detach().clone() for p in params]
    best_proxies = method.bank.proxies.detach().clone()
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
        method.bank.proxies.add_(5.0)
    method.on_validation_end({"map@r": 0.3}, trainer)  # no improvement → projection
    assert int(method.stage) == 1
    for anchor, b in zip(method.proximal.anchors, best, strict=True):
        assert torch.equal(anchor, b)
    assert torch.equal(calls[-1], best_proxies)  # k-center seeded with the stage's best proxies, not the current
    assert torch.equal(method.bank.proxies, torch.full((3, 2, 6), 2.0))  # replaced by the new selection
    n = sum(p.numel() for p in params)
    assert method.proximal().item() == pytest.approx(0.5 * 0.5 * n)  # λ/2 ‖θ − θ̄‖² with θ − θ̄ = 1 everywhere
    # official behaviour: training goes on from the current weights; the switch restores the best ones
    assert torch.equal(params[0], best[0] + 1.0)
    assert trainer.records[-1]["type"] == "ccp_stage" and trainer.records[-1]["stage"] == 1


def test_restore_best_and_reset_proxy_optimizer_state_switches():
    method, _ = make_method(stage_patience=1, restore_best_on_projection=True, reset_proxy_optimizer_state=True)
    trainer = ScriptedContext(method)
    method.on_train_start(trainer)
    trainer.optimizer.state[method.bank.proxies]["exp_avg"] = torch.ones(1)
    method.on_validation_end({"map@r": 0.4}, trainer)
    best = method.proximal.params[0].detach().clone()
    with torch.no_grad():
        method.proximal.params[0].add_(1.0)
    method.on_validation_end({"map@r": 0.3}, trainer)
    assert torch.equal(method.proximal.params[0], best)
    assert method.bank.proxies not in trainer.optimizer.state


def test_lagged_stage_metric_reproduces_the_official_one_evaluation_delay():
    fresh, _ = make_method(stage_patience=1)
    lagged, _ = make_method(stage_patience=1, lagged_stage_metric=True)
    values = [0.1, 0.2, 0.3, 0.25, 0.4]
    assert drive(fresh, values)[1] == [0, 0, 0, 1, 1]
    assert drive(lagged, values)[1] == [1, 1, 1, 1, 2]  # −inf first (stale), then each decision one value late


def test_proxy_group_options_follow_the_switches():
    method, _ = make_method(proxy_weight_decay=False, proxy_lr_mult=10.0)
    groups = {g["name"]: g for g in method.param_groups(1e-3, 1e-4)}
    assert groups["proxies"]["lr"] == pytest.approx(1e-2) and groups["proxies"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 1e-4


def test_candidate_pool_indices_are_per_class_without_replacement():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2]).numpy()
    idx = pool_indices(labels, 3, per_class=2, seed=0)
    for c in range(3):
        assert len(set(idx[c].tolist())) == 2 and all(labels[i] == c for i in idx[c])
    big = pool_indices(labels, 3, per_class=5, seed=0)  # more than a class has: every image before any repeat
    assert set(big[0][:3].tolist()) == {0, 2, 5}
    assert (pool_indices(labels, 3, 2, seed=1) == pool_indices(labels, 3, 2, seed=1)).all()

"""optim.grad_clip_norm / grad_clip_value, checked by hand."""

from types import SimpleNamespace

import torch

from deepmetric.training.optim import clip_gradients


def _param(grad):
    p = torch.nn.Parameter(torch.zeros(len(grad)))
    p.grad = torch.tensor(grad)
    return p


def test_norm_then_value_after_unscaling():
    p, calls = _param([3.0, 4.0]), []
    clip_gradients(SimpleNamespace(grad_clip_norm=1.0, grad_clip_value=None), [p], lambda: calls.append(1))
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8])) and calls == [1]  # |(3, 4)| = 5 → scaled by 1/5
    clip_gradients(SimpleNamespace(grad_clip_norm=None, grad_clip_value=0.7), [p], lambda: calls.append(2))
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.7])) and calls == [1, 2]


def test_both_set_clip_the_unscaled_gradients_by_norm_first():
    p = _param([30.0, 40.0])  # scaled by 10, as AMP's scaler leaves them

    def unscale():
        p.grad /= 10

    clip_gradients(SimpleNamespace(grad_clip_norm=1.0, grad_clip_value=0.7), [p], unscale)
    # unscale → (3, 4); norm 1 → (0.6, 0.8); value 0.7 → (0.6, 0.7). Value first would give (0.707, 0.707), and
    # clipping before unscaling (0.06, 0.07)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.7]))


def test_nothing_set_leaves_gradients_and_the_scaler_alone():
    p, calls = _param([3.0, -4.0]), []
    clip_gradients(SimpleNamespace(grad_clip_norm=None, grad_clip_value=None), [p], lambda: calls.append(1))
    assert p.grad.tolist() == [3.0, -4.0] and calls == []

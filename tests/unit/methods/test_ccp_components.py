"""CCP building blocks: k-center against a brute-force farthest-point loop, proxies, proximal gradient, lipnorm."""

import time

import pytest
import torch

from deepmetric.methods.ccp_components import ProximalTerm, ProxyBank, kcenter_per_class, lipschitz_normalize


def brute_force_kcenter(points, seeds, k):
    """Farthest-point selection in Python, one class."""
    covered = [s for s in seeds] if seeds is not None else [torch.zeros(points.shape[1])]
    picks = []
    for _ in range(k):
        best, best_d = None, -1.0
        for i, x in enumerate(points):
            d = min(float((x - c).pow(2).sum()) for c in covered)
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
        covered.append(points[best])
    return picks


@pytest.mark.parametrize("with_seeds", [False, True])
def test_kcenter_equals_brute_force(with_seeds):
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(6, 12, 5, generator=g)
    seeds = torch.randn(6, 3, 5, generator=g) if with_seeds else None
    picks, idx = kcenter_per_class(pool, 4, seeds)
    for c in range(6):
        assert idx[c].tolist() == brute_force_kcenter(pool[c], None if seeds is None else seeds[c], 4)
        assert torch.equal(picks[c], pool[c, idx[c]])


def test_first_pick_without_seeds_is_the_largest_norm():
    pool = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]]])
    _, idx = kcenter_per_class(pool, 1)
    assert idx.tolist() == [[1]]


def test_proxies_equal_sample_embeddings_after_reinitialisation():
    bank = ProxyBank(num_classes=4, per_class=2, dim=3)
    pool = torch.randn(4, 7, 3)
    picks, idx = kcenter_per_class(pool, 2)
    bank.reinitialise(picks)
    flat, labels = bank.flat()
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for row, (c, k) in enumerate((c, k) for c in range(4) for k in range(2)):
        assert torch.equal(flat[row], pool[c, idx[c, k]])
    with pytest.raises(ValueError, match="do not fit"):
        bank.reinitialise(torch.zeros(4, 3, 3))


def test_proximal_gradient_is_lambda_times_the_offset():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    term = ProximalTerm([w], lam=0.5)
    assert term().item() == 0  # inactive before the first stage ends
    term.anchor([torch.tensor([0.0, 1.0])])
    loss = term()
    loss.backward()
    assert loss.item() == pytest.approx(0.25 * (1 + 9))
    assert torch.allclose(w.grad, 0.5 * torch.tensor([1.0, -3.0]))


def test_lipschitz_normalisation_only_shrinks_long_vectors():
    v = torch.tensor([[0.3, 0.4], [3.0, 4.0]])
    out = lipschitz_normalize(v)
    assert torch.allclose(out[0], v[0]) and torch.allclose(out[1], torch.tensor([0.6, 0.8]))


def test_kcenter_on_an_sop_sized_pool_is_fast():
    pool = torch.randn(11_318, 7, 128)
    seeds = torch.randn(11_318, 4, 128)
    t0 = time.perf_counter()
    picks, _ = kcenter_per_class(pool, 4, seeds)
    assert picks.shape == (11_318, 4, 128)
    assert time.perf_counter() - t0 < 5.0  # measured well under 1 s; generous bound for a loaded CI machine

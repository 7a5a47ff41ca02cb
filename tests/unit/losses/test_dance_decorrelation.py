"""DaNCE weights and loss; adversarial decorrelation's min–max game."""

import math

import pytest
import torch
import torch.nn.functional as F

from deepmetric.losses import AdversarialDecorrelation, DaNCELoss, coactivation, dance_weights


def unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_fixed_weights_are_non_negative_rows_summing_to_one_and_zero_beyond_the_upper_cutoff():
    q, bank = unit_rows(16, 32, 0), unit_rows(200, 32, 1)
    sim = q @ bank.T
    w = dance_weights(sim, 32, "fixed")
    assert (w >= 0).all()
    assert torch.allclose(w.sum(dim=1), torch.ones(16), atol=1e-5)
    far = (2 - 2 * sim).clamp_min(0).sqrt() > 1.4
    assert far.any() and (w[far] < 1e-30).all()


def test_legacy_weights_normalise_each_queue_entry_over_the_batch():
    q, bank = unit_rows(8, 32, 2), unit_rows(50, 32, 3)
    w = dance_weights(q @ bank.T, 32, "legacy")
    assert torch.allclose(w.sum(dim=0), torch.ones(50), atol=1e-5)
    assert torch.equal(dance_weights(q @ bank.T, 32, "none"), torch.ones(8, 50))


def test_plain_moco_loss_by_hand():
    q, k, bank = unit_rows(4, 8, 4), unit_rows(4, 8, 5), unit_rows(6, 8, 6)
    loss = DaNCELoss(temperature=0.1, weighting="none")(q, k, bank)
    expected = 0.0
    for i in range(4):
        logits = [float(q[i] @ k[i]) / 0.1] + [float(q[i] @ bank[j]) / 0.1 for j in range(6)]
        expected += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)


@pytest.mark.parametrize("close", [1, 40])
def test_fixed_weights_share_one_weight_among_the_entries_inside_the_lower_cutoff(close):
    """Every queue entry nearer than d = 0.5 gets the largest weight, so ``close`` such entries get 1 / close each
    (the rest lie beyond the upper cutoff): with many near neighbours (a trained, clustered embedding) each weighted
    negative logit ω·s/T is tiny, and the loss is log(1 + close·e^{(0.9/close − s⁺)/T} + far·e^{−s⁺/T}) by hand."""
    d, far, T = 16, 200, 0.01
    q = torch.zeros(1, d)
    q[0, 0] = 1.0
    near = torch.zeros(close, d)
    near[:, 0], near[:, 1] = 0.9, math.sqrt(1 - 0.81)  # s = 0.9: d = 0.447 < 0.5
    distant = torch.zeros(far, d)
    distant[:, 2] = 1.0  # s = 0: d = 1.414 > 1.4
    bank = torch.cat([near, distant])
    w = dance_weights(q @ bank.T, d, "fixed")
    assert torch.allclose(w[0, :close], torch.full((close,), 1 / close)) and (w[0, close:] < 1e-30).all()
    s_pos = 0.92  # the positive: a little nearer than the near negatives
    k = torch.tensor([[s_pos, math.sqrt(1 - s_pos**2)] + [0.0] * (d - 2)])
    expected = math.log(1 + close * math.exp((0.9 / close - s_pos) / T) + far * math.exp(-s_pos / T))
    loss = DaNCELoss(temperature=T, weighting="fixed")(q, k, bank)
    assert loss.item() == pytest.approx(expected, rel=1e-3, abs=1e-12)
    assert (loss.item() > 1e-3) == (close == 1)  # one near neighbour competes with the positive; 40 share its weight


def test_dance_gradient_reaches_only_the_queries():
    q = unit_rows(4, 8, 7).requires_grad_(True)
    k, bank = unit_rows(4, 8, 8).requires_grad_(True), unit_rows(6, 8, 9)
    DaNCELoss()(q, k, bank).backward()
    assert q.grad is not None and k.grad is None
    with pytest.raises(ValueError, match="weighting"):
        DaNCELoss(weighting="softmax")


def test_one_encoder_step_lowers_and_one_regressor_step_raises_the_coactivation():
    torch.manual_seed(0)
    heads = {h: torch.randn(32, 16, requires_grad=True) for h in ("discriminative", "shared", "intra")}
    decor = AdversarialDecorrelation([("shared", "discriminative", 100.0), ("intra", "discriminative", 100.0)], dim=16,
                                     hidden=32)  # fmt: skip

    def measure():
        with torch.no_grad():
            g = {h: F.normalize(e, dim=1) for h, e in heads.items()}
            r = F.normalize(decor.regressors["shared->discriminative"](g["shared"]), dim=1)
            return coactivation(g["discriminative"], r).item()

    before = measure()
    loss, parts = decor(heads)
    loss.backward()
    assert set(parts) == {"shared->discriminative", "intra->discriminative"}
    with torch.no_grad():  # an encoder step: gradient descent on the (reversed) head gradients
        for e in heads.values():
            e -= 0.05 * e.grad
    assert measure() < before
    middle = measure()
    opt = torch.optim.SGD(decor.parameters(), lr=0.05)
    opt.zero_grad()
    decor({h: e.detach() for h, e in heads.items()})[0].backward()
    opt.step()  # a regressor step: descent on −ρC
    assert measure() > middle


def test_pairs_are_explicit_and_checked():
    with pytest.raises(ValueError, match="triples"):
        AdversarialDecorrelation([("shared", "discriminative")])
    with pytest.raises(ValueError, match="itself"):
        AdversarialDecorrelation([("a", "a", 1.0)])
    with pytest.raises(ValueError, match="does not have"):
        AdversarialDecorrelation([("x", "y", 1.0)], dim=4, hidden=4)({"x": torch.randn(2, 4)})

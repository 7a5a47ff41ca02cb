"""The cross-batch memory (XBM) against pytorch-metric-learning's ``CrossBatchMemory`` on fixed inputs: the same
queue, loss values and gradients over several enqueue steps (the queue wraps), for PML's losses and miners and for
deepmetric's own; and what PML cannot compare: the own copy excluded before a choice (EPS), the warm-up, the state
dict, non-finite rows, the XBM sum ℓ(B, B) + ℓ(B, M)."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance

from deepmetric.losses import (
    AllTripletsMarginLoss,
    CrossBatchMemory,
    DivaMarginLoss,
    MarginContrastiveLoss,
    PairMultiSimilarityLoss,
    pair_loss,
    takes_reference_set,
)
from deepmetric.miners import DistanceWeightedTripletMiner, EasyPositiveMiner
from deepmetric.registry import resolve

SIZE, DIM, BATCH, STEPS = 20, 8, 6, 6  # 6 batches of 6 in a queue of 20: it fills, then wraps twice


def raw():
    return LpDistance(normalize_embeddings=False)


def dot():
    return DotProductSimilarity(normalize_embeddings=False)


def pair_miner():
    return pml_miners.PairMarginMiner(0.2, 0.8, distance=raw())


def same(make):
    return make, make


# name: (ours → (loss, miner), PML's → (loss, miner)); deepmetric's losses meet PML's twins with the same distances
CASES = {
    "contrastive": same(lambda: (pml_losses.ContrastiveLoss(0.1, 0.7), None)),
    "multi_similarity+miner": same(lambda: (pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner(0.1))),
    "triplet+semihard_miner": same(
        lambda: (pml_losses.TripletMarginLoss(0.2), pml_miners.TripletMarginMiner(0.2, type_of_triplets="semihard"))
    ),
    "triplet_all": same(lambda: (pml_losses.TripletMarginLoss(0.2), None)),
    "ntxent": same(lambda: (pml_losses.NTXentLoss(0.1), None)),
    "ccp_c2": (
        lambda: (MarginContrastiveLoss(0.1, 0.7), None),
        lambda: (pml_losses.ContrastiveLoss(0.1, 0.7, distance=raw()), None),
    ),
    "ccp_ms": (
        lambda: (PairMultiSimilarityLoss(2.0, 40.0, 0.5), None),
        lambda: (pml_losses.MultiSimilarityLoss(2, 40, 0.5, distance=dot()), None),
    ),
    "ccp_triplet": (
        lambda: (AllTripletsMarginLoss(0.2), None),
        lambda: (pml_losses.TripletMarginLoss(0.2, distance=raw()), None),
    ),
    "ccp_c2+pml_miner": (
        lambda: (MarginContrastiveLoss(0.1, 0.7), pair_miner()),
        lambda: (pml_losses.ContrastiveLoss(0.1, 0.7, distance=raw()), pair_miner()),
    ),
}


def batches(scale=1.0, n=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(BATCH, DIM, generator=g), torch.randint(0, 3, (BATCH,), generator=g))
            for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("batch_weight", [0.0, 1.0], ids=["memory_only", "xbm_sum"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_pml_cross_batch_memory(case, batch_weight):
    """Same queue, loss and gradient as PML's wrapper at every step; with ``batch_weight`` 1, plus the in-batch loss."""
    ours_factory, theirs_factory = CASES[case]
    loss, miner = ours_factory()
    pml_loss, pml_miner = theirs_factory()
    wrapper = pml_losses.CrossBatchMemory(pml_loss, DIM, memory_size=SIZE, miner=pml_miner)
    plain_loss, plain_miner = theirs_factory()  # the in-batch term, PML's way
    memory = CrossBatchMemory(SIZE, DIM, batch_weight=batch_weight)
    scale = 0.3 if case.startswith("ccp") else 1.0  # (deepmetric's CCP losses take the inputs as they are)
    for step, (x, y) in enumerate(batches(scale)):
        ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        value, parts = pair_loss(loss, miner, ours, y, memory)
        value.backward()
        memory.step_end(step + 1)
        expected = wrapper(theirs, y)
        if batch_weight:
            expected = expected + plain_loss(theirs, y, plain_miner(theirs, y) if plain_miner else None)
        expected.backward()
        assert torch.equal(memory.embeddings, wrapper.embedding_memory), step
        assert torch.equal(memory.labels, wrapper.label_memory), step
        assert value.item() == pytest.approx(expected.item(), abs=1e-6, rel=1e-6), step
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-6), (step, (ours.grad - theirs.grad).abs().max())
        assert set(parts) == ({"batch", "memory"} if batch_weight else {"memory"})
    assert memory.held == SIZE and memory._position == (STEPS * BATCH) % SIZE


def test_every_pml_loss_the_wrapper_supports_takes_a_memory_and_no_proxy_loss_does():
    for name in pml_losses.CrossBatchMemory.supported_losses():
        assert takes_reference_set(getattr(pml_losses, name)), name
    for name in ("ccp_c1", "ccp_c2", "ccp_ms", "ccp_triplet", "diva_margin"):
        assert takes_reference_set(resolve("loss", name)), name
    for name in ("proxy_anchor", "proxy_nca", "normalized_softmax", "arcface", "soft_triple", "cosface"):
        assert not takes_reference_set(resolve("loss", name)), name


def test_eps_never_chooses_the_own_copy_but_the_nearest_other_positive():
    """A PML-style filter after the choice would leave every anchor without its positive (the own copy is nearest);
    deepmetric's miners exclude it before choosing."""
    memory = CrossBatchMemory(SIZE, DIM, batch_weight=0.0)
    miner = EasyPositiveMiner(negatives="hard")
    for step, (x, y) in enumerate(batches(n=4)):
        x = F.normalize(x, dim=1)
        ref, ref_y, own = memory.references(x, y)
        a1, p, a2, n = miner(x, y, ref, ref_y, self_index=own)
        assert not (p == own[a1]).any()
        same = (y[:, None] == ref_y[None]) & (torch.arange(len(ref))[None] != own[:, None])
        dist = torch.cdist(x, ref).masked_fill(~same, float("inf"))
        has = torch.isfinite(dist.min(1).values)
        assert torch.equal(a1, torch.arange(BATCH)[has]) and torch.equal(p, dist.argmin(1)[has]), step
        assert (y[a2] != ref_y[n]).all()
        memory.step_end(step + 1)


def test_diva_miners_and_margin_loss_with_a_memory():
    memory = CrossBatchMemory(SIZE, DIM, batch_weight=0.0)
    loss, miner = DivaMarginLoss(3), DistanceWeightedTripletMiner()
    for step, (x, y) in enumerate(batches(n=4)):
        x = x.requires_grad_()
        ref, ref_y, own = memory.references(x, y)
        a, p, n = miner(x, y, ref, ref_y, self_index=own)
        assert not (p == own[a]).any() and (y[a] == ref_y[p]).all() and (y[a] != ref_y[n]).all()
        value, _ = pair_loss(loss, EasyPositiveMiner("distance_weighted"), x, y, memory)  # EPS pairs → triplets
        value.backward()
        assert torch.isfinite(value) and x.grad.abs().sum() > 0
        memory.step_end(step + 1)


def test_warm_up_is_the_plain_loss_and_the_queue_fills_after_it():
    loss = pml_losses.ContrastiveLoss()
    memory = CrossBatchMemory(SIZE, DIM, warmup_steps=2)
    for step, (x, y) in enumerate(batches(n=4)):
        value, parts = pair_loss(loss, None, x, y, memory)
        if step < 2:
            assert value.item() == loss(x, y).item() and parts["memory"].item() == 0 and memory.held == 0
        else:
            assert value.item() == pytest.approx(parts["batch"].item() + parts["memory"].item())
        memory.step_end(step + 1)
    assert memory.held == 2 * BATCH


def test_state_dict_resumes_the_queue_exactly():
    loss = pml_losses.ContrastiveLoss()
    data = batches(n=6)
    whole = CrossBatchMemory(SIZE, DIM, warmup_steps=1)
    expected = []
    for step, (x, y) in enumerate(data):
        expected.append(pair_loss(loss, None, x, y, whole)[0].item())
        whole.step_end(step + 1)
    first = CrossBatchMemory(SIZE, DIM, warmup_steps=1)
    for step, (x, y) in enumerate(data[:4]):
        pair_loss(loss, None, x, y, first)
        first.step_end(step + 1)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert set(state) == {"embeddings", "labels", "filled", "position", "steps"}
    resumed = CrossBatchMemory(SIZE, DIM, warmup_steps=1)
    resumed.load_state_dict(state)
    for step, (x, y) in enumerate(data[4:], start=4):
        assert pair_loss(loss, None, x, y, resumed)[0].item() == expected[step]
        resumed.step_end(step + 1)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_references_leave_the_queue_alone_until_the_step_ends():
    memory = CrossBatchMemory(SIZE, DIM)
    x, y = batches(n=1)[0]
    before = memory.embeddings.clone()
    ref, ref_y, own = memory.references(x, y)
    assert torch.equal(memory.embeddings, before) and len(ref) == BATCH and torch.equal(own, torch.arange(BATCH))
    assert torch.equal(ref, x) and torch.equal(ref_y, y)
    memory.step_end(1)
    assert torch.equal(memory.embeddings[:BATCH], x) and memory.held == BATCH


def test_non_finite_rows_enter_as_zeros_and_a_batch_larger_than_the_queue_is_an_error():
    memory = CrossBatchMemory(SIZE, DIM)
    x, y = batches(n=1)[0]
    x[0, 0] = float("nan")
    memory.references(x, y)
    memory.step_end(1)
    assert torch.isfinite(memory.embeddings).all() and not memory.embeddings[0].any()
    with pytest.raises(ValueError, match="a batch of 21 does not fit a cross-batch memory of 20"):
        memory.references(torch.randn(21, DIM), torch.zeros(21, dtype=torch.long))
    with pytest.raises(ValueError, match="size ≥ 1"):
        CrossBatchMemory(0, DIM)

"""The miner contract, for every registered deepmetric miner and a representative set of PML's, built by name.

``miner(embeddings, labels, ref_emb=None, ref_labels=None, generator=None)`` → triplets ``(a, p, n)`` or pairs
``(a1, p, a2, n)`` of long tensors: anchors index the batch, positives and negatives the reference set (the batch
itself by default, then no sample is its own positive). An empty batch gives empty tensors; one class only (no
negatives), singletons (no positives) and an explicit reference set all give valid indices. deepmetric's miners
also take a ``generator`` (same seed, same draws).
"""

import pytest
import torch

from deepmetric.miners import Miner
from deepmetric.registry import MINERS, build_miner

DIM = 6
# (name, params): every registered miner with its defaults, and the other modes of those that have some
OWN = [(name, {}) for name in MINERS.names()] + [
    ("diva_shared", {"sharing": "standard"}),
    ("diva_shared", {"sharing": "full"}),
    ("diva_intra", {"triplets": 5}),
    ("easy_positive", {"negatives": "distance_weighted", "negatives_per_anchor": 2}),
    ("easy_positive", {"negatives": "all", "k": 2}),
    ("easy_positive", {"negatives": "multi_similarity"}),
]
PML = [(name, {}) for name in ("multi_similarity", "triplet_margin", "pair_margin", "angular")]


def ids(cases):
    return [name + "".join(f"-{v}" for v in params.values()) for name, params in cases]


def label_rule(name, params):
    """What the labels of mined indices satisfy: PML's rule (same-label positives, other-label negatives) unless the
    miner's task says otherwise (DiVA's class-shared and intra-class tasks)."""
    key = name.replace("_", "")  # registered names are canonical: divashared
    if key == "divashared":
        return "none" if params.get("sharing", "random") == "random" else "shared"
    return "intra" if key == "divaintra" else "labels"


def batch(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    return torch.randn(len(labels), DIM, generator=g), labels


def check(out, y, ref_y, rule, own_ref):
    """Long index tensors of consistent lengths, in range, and obeying ``rule``."""
    assert isinstance(out, tuple) and len(out) in (3, 4)
    assert all(t.dtype == torch.long and t.dim() == 1 for t in out)
    a_pos, p, a_neg, n = out if len(out) == 4 else (out[0], out[1], out[0], out[2])
    assert len(a_pos) == len(p) and len(a_neg) == len(n) and (len(out) == 4 or len(p) == len(n))
    for anchors, refs in ((a_pos, p), (a_neg, n)):
        assert ((anchors >= 0) & (anchors < len(y))).all() and ((refs >= 0) & (refs < len(ref_y))).all()
    if rule == "labels":
        assert (y[a_pos] == ref_y[p]).all() and (y[a_neg] != ref_y[n]).all()
        if own_ref:
            assert (a_pos != p).all()
    elif rule == "shared":
        assert (y[out[0]] != ref_y[out[1]]).all() and (y[out[0]] != ref_y[out[2]]).all()
        assert (ref_y[out[1]] != ref_y[out[2]]).all()
    elif rule == "intra":
        assert (y[out[0]] == ref_y[out[1]]).all() and (y[out[0]] == ref_y[out[2]]).all()
    return out


def mine(name, params, *args, **kwargs):
    miner = build_miner(name, params)
    torch.manual_seed(0)  # PML's and EPS's draws use the global RNG when no generator is given
    return miner, miner(*args, **kwargs)


@pytest.mark.parametrize("name,params", OWN + PML, ids=ids(OWN + PML))
def test_a_balanced_batch(name, params):
    x, y = batch(torch.arange(4).repeat(4))
    _, out = mine(name, params, x, y)
    check(out, y, y, label_rule(name, params), own_ref=True)
    assert len(out[0]) > 0


@pytest.mark.parametrize("name,params", OWN + PML, ids=ids(OWN + PML))
def test_empty_batch_gives_empty_indices(name, params):
    x, y = batch(torch.zeros(0, dtype=torch.long))
    _, out = mine(name, params, x, y)
    assert len(out) in (3, 4) and all(t.numel() == 0 and t.dtype == torch.long for t in out)


@pytest.mark.parametrize("name,params", OWN + PML, ids=ids(OWN + PML))
@pytest.mark.parametrize("labels", [[3] * 8, list(range(8))], ids=["one_class", "singletons"])
def test_one_class_and_singletons(name, params, labels):
    x, y = batch(labels, seed=1)
    _, out = mine(name, params, x, y)
    rule = label_rule(name, params)
    check(out, y, y, rule, own_ref=True)
    positives, negatives = out[1], out[-1]
    if rule == "labels" and len(set(labels)) == 1:
        assert negatives.numel() == 0  # no other class: no negative
    if rule == "labels" and len(set(labels)) == len(labels):
        assert positives.numel() == 0  # no other sample of the class: no positive


@pytest.mark.parametrize("name,params", OWN + PML, ids=ids(OWN + PML))
def test_explicit_reference_set(name, params):
    x, y = batch(torch.arange(3).repeat(2), seed=2)
    ref, ref_y = batch(torch.arange(4).repeat(5), seed=3)  # class 3 only in the reference set
    _, out = mine(name, params, x, y, ref, ref_y)
    check(out, y, ref_y, label_rule(name, params), own_ref=False)
    assert len(out[0]) > 0 and max(int(t.max()) for t in (out[1], out[-1]) if len(t)) >= len(y)  # into the ref


@pytest.mark.parametrize("name,params", OWN, ids=ids(OWN))
def test_own_miners_take_a_generator_and_reject_bad_inputs(name, params):
    miner = build_miner(name, params)
    assert isinstance(miner, Miner)
    x, y = batch(torch.arange(4).repeat(4), seed=4)
    first = miner(x, y, generator=torch.Generator().manual_seed(7))
    again = miner(x, y, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(first, again, strict=True))
    assert not miner(x.requires_grad_(), y)[0].requires_grad
    with pytest.raises(ValueError, match="give both ref_emb and ref_labels, or neither"):
        miner(x, y, x)
    with pytest.raises(ValueError, match=r"one label per embedding: embeddings \(16, 6\), labels \(15,\)"):
        miner(x, y[:-1])
    with pytest.raises(ValueError, match="ref_emb must be a 2-D tensor with the embeddings' dimension 6"):
        miner(x, y, x[:, :3], y)

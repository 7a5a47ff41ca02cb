"""ClassBalancedBatchSampler: balance, coverage, determinism, resume, sharding (hypothesis)."""

import functools
import operator
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepmetric.data import ClassBalancedBatchSampler
from deepmetric.data.sampler import _count_batches

class_sizes = st.lists(st.integers(1, 30), min_size=2, max_size=12)


def labels_from(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def greedy_reference(groups, P):
    """Brute-force: one batch at a time from the P classes with most groups left."""
    g = list(groups)
    n = 0
    while sum(x > 0 for x in g) >= P:
        for c in sorted(range(len(g)), key=lambda c: -g[c])[:P]:
            g[c] -= 1
        n += 1
    return n


@pytest.mark.filterwarnings("ignore:.*topped up with repeats")
@given(sizes=class_sizes, P=st.integers(1, 4), M=st.integers(1, 5), seed=st.integers(0, 99))
def test_every_batch_has_P_distinct_classes_with_M_items(sizes, P, M, seed):
    labels = labels_from(sizes)
    if len(sizes) < P:
        with pytest.raises(ValueError, match="needs"):
            ClassBalancedBatchSampler(labels, P, M, seed=seed)
        return
    sampler = ClassBalancedBatchSampler(labels, P, M, seed=seed)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sampler.num_batches
    for b in batches:
        counts = Counter(labels[b].tolist())
        assert len(b) == P * M and len(counts) == P and set(counts.values()) == {M}


@given(sizes=class_sizes, P=st.integers(1, 4), M=st.integers(1, 5))
def test_epoch_length_is_the_greedy_maximum(sizes, P, M):
    groups = np.array([-(-s // M) for s in sizes])
    assert _count_batches(groups, P) == greedy_reference(groups, P)


@pytest.mark.filterwarnings("ignore:.*topped up with repeats")
@given(sizes=class_sizes, P=st.integers(1, 3), M=st.integers(1, 4), seed=st.integers(0, 99))
def test_classes_whose_groups_are_all_used_are_fully_visited(sizes, P, M, seed):
    labels = labels_from(sizes)
    if len(sizes) < P:
        return
    sampler = ClassBalancedBatchSampler(labels, P, M, seed=seed)
    batches = list(sampler)
    used = Counter(c for b in batches for c in set(labels[b].tolist()))  # groups used per class
    assert sum(used.values()) == len(batches) * P
    seen = set(np.concatenate(batches).tolist()) if batches else set()
    for c, size in enumerate(sizes):
        groups = -(-size // M)
        assert used.get(c, 0) <= groups
        if used.get(c, 0) == groups:
            assert set(np.flatnonzero(labels == c).tolist()) <= seen


def test_exact_coverage_on_balanced_data():
    labels = np.repeat(np.arange(10), 32)
    sampler = ClassBalancedBatchSampler(labels, 5, 8, seed=1)
    seen = np.concatenate(list(sampler))
    assert len(sampler) == 8 and sorted(seen.tolist()) == list(range(320))


@given(seed=st.integers(0, 1000), epoch=st.integers(0, 5))
def test_deterministic_from_seed_and_epoch(seed, epoch):
    labels = labels_from([7, 9, 4, 12, 6])
    a = ClassBalancedBatchSampler(labels, 3, 2, seed=seed)
    b = ClassBalancedBatchSampler(labels, 3, 2, seed=seed)
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    assert list(a) == list(b)
    b.set_epoch(epoch + 1)
    assert list(a) != list(b)


@given(start=st.integers(0, 10), seed=st.integers(0, 99))
def test_resume_from_batch_index(start, seed):
    labels = labels_from([13, 17, 11, 20])
    full = ClassBalancedBatchSampler(labels, 2, 3, seed=seed)
    full.set_epoch(2)
    expected = list(full)
    start = min(start, len(expected))
    resumed = ClassBalancedBatchSampler(labels, 2, 3, seed=seed)
    resumed.set_epoch(2, start_batch=start)
    assert list(resumed) == expected[start:] and len(resumed) == len(expected) - start


@given(world=st.sampled_from([1, 2, 4]), seed=st.integers(0, 99))
def test_shards_are_disjoint_parts_of_the_global_batch(world, seed):
    labels = labels_from([16, 12, 9, 20, 8, 11, 30, 5])
    single = list(ClassBalancedBatchSampler(labels, 4, 4, seed=seed))
    shards = [list(ClassBalancedBatchSampler(labels, 4, 4, seed=seed, rank=r, world_size=world)) for r in range(world)]
    for b, batch in enumerate(single):
        parts = [shards[r][b] for r in range(world)]
        assert functools.reduce(operator.iadd, parts, []) == batch
        assert len(set().union(*map(set, parts))) == len(set(batch))


def test_small_classes_topup_or_drop():
    labels = labels_from([2, 10, 10, 10])
    with pytest.warns(UserWarning, match="fewer than M=4"):
        sampler = ClassBalancedBatchSampler(labels, 2, 4)
    assert any(set(labels[b]) >= {0} for b in sampler)
    dropped = ClassBalancedBatchSampler(labels, 2, 4, small_classes="drop")
    assert dropped.dropped_classes == [0] and all(0 not in labels[b] for b in dropped)
    with pytest.raises(ValueError, match="needs 4 classes with at least 4 items"):
        ClassBalancedBatchSampler(labels, 4, 4, small_classes="drop")


def test_bad_arguments():
    labels = labels_from([4, 4])
    with pytest.raises(ValueError, match="cannot be split evenly"):
        ClassBalancedBatchSampler(labels, 1, 3, world_size=2)
    with pytest.raises(ValueError, match="≥ 1"):
        ClassBalancedBatchSampler(labels, 0, 2)
    with pytest.raises(ValueError, match="small_classes"):
        ClassBalancedBatchSampler(labels, 1, 2, small_classes="ignore")
    with pytest.raises(ValueError, match="non-empty"):
        ClassBalancedBatchSampler([], 1, 2)
    with pytest.raises(ValueError, match="start_batch"):
        ClassBalancedBatchSampler(labels, 1, 2).set_epoch(0, start_batch=99)

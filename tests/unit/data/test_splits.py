"""Protocols: zero-shot, official, superclass, class-disjoint validation, k-fold, explicit lists."""

import numpy as np
import pytest
import torch

from deepmetric.data import (
    ImageTable,
    ProtocolConfig,
    class_disjoint_split,
    kfold_class_splits,
    load_dataset,
    make_splits,
)


def fmnist_like(n_per_class_train=12, n_per_class_test=4):
    """A Fashion-MNIST-shaped table: an image split over the same 10 classes, with its coarse map."""
    from deepmetric.data.fashion_mnist import COARSE_MAP

    labels = np.concatenate([np.repeat(np.arange(10), n_per_class_train), np.repeat(np.arange(10), n_per_class_test)])
    split = ["train"] * (10 * n_per_class_train) + ["test"] * (10 * n_per_class_test)
    return ImageTable(
        name="fashion_mnist",
        labels=labels,
        split=np.array(split, dtype=object),
        images=torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8),
        coarse_labels=np.vectorize(COARSE_MAP.get)(labels),
    )


def test_zero_shot_default_uses_train_images_of_seen_and_test_images_of_unseen_classes():
    t = fmnist_like()
    s = make_splits(t, seed=0)
    assert s.protocol == "zero_shot"
    assert set(np.unique(t.labels[s.train])) == set(range(5)) and set(np.unique(t.labels[s.test])) == set(range(5, 10))
    assert (t.split[s.train] == "train").all() and (t.split[s.val] == "train").all()
    assert (t.split[s.test] == "test").all() and len(s.test) == 5 * 4
    # 5 training classes: validation holds out images of the training classes (val_by=auto)
    assert set(np.unique(t.labels[s.val])) == set(range(5))
    assert not np.intersect1d(s.train, s.val).size


def test_digits_zero_shot_uses_all_images():
    t = load_dataset("digits")
    s = make_splits(t, ProtocolConfig(val_by="none"))
    assert len(s.train) + len(s.test) == 1797 and len(s.val) == 0
    assert t.labels[s.train].max() == 4 and t.labels[s.test].min() == 5


def test_explicit_class_lists_and_errors():
    t = fmnist_like()
    s = make_splits(t, ProtocolConfig(name="zero_shot", train_classes=[0, 2, 4, 6], test_classes=[1, 3]))
    assert set(np.unique(t.labels[s.test])) == {1, 3}
    s = make_splits(t, ProtocolConfig(train_classes=[0, 1, 2]))  # test classes default to the rest
    assert set(np.unique(t.labels[s.test])) == set(range(3, 10))
    with pytest.raises(ValueError, match="overlap"):
        make_splits(t, ProtocolConfig(name="zero_shot", train_classes=[0, 1], test_classes=[1, 2]))
    with pytest.raises(ValueError, match=r"train_classes: classes \[42\]"):
        make_splits(t, ProtocolConfig(name="zero_shot", train_classes=[0, 42]))
    with pytest.raises(ValueError, match=r"protocol\.name"):
        make_splits(t, ProtocolConfig(name="leaky"))


def test_class_disjoint_validation_with_many_classes(tmp_path):
    from .layouts import write_cub

    t = load_dataset("cub200", write_cub(tmp_path, train=(400, 100), test=(200, 100)))
    s = make_splits(t, ProtocolConfig(val_fraction=0.2), seed=3)
    train_cls, val_cls = np.unique(t.labels[s.train]), np.unique(t.labels[s.val])
    assert len(val_cls) == 20 and len(train_cls) == 80 and not np.intersect1d(train_cls, val_cls).size
    assert not np.intersect1d(np.unique(t.labels[s.test]), np.union1d(train_cls, val_cls)).size
    assert np.array_equal(make_splits(t, ProtocolConfig(val_fraction=0.2), seed=3).val, s.val)
    assert not np.array_equal(make_splits(t, ProtocolConfig(val_fraction=0.2), seed=4).val, s.val)
    s4 = make_splits(t, ProtocolConfig(n_folds=4, fold=1))
    assert len(np.unique(t.labels[s4.val])) == 25


def test_kfold_partitions_the_classes():
    folds = kfold_class_splits(np.arange(10, 30), n_folds=4, seed=1)
    vals = [v for _, v in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(10, 30))
    for train, val in folds:
        assert not np.intersect1d(train, val).size and len(train) + len(val) == 20
    with pytest.raises(ValueError, match="n_folds"):
        kfold_class_splits(np.arange(3), n_folds=4)


def test_class_disjoint_split_counts():
    kept, held = class_disjoint_split([5, 1, 3, 9, 7], count=2, seed=0)
    assert len(held) == 2 and sorted(np.concatenate([kept, held]).tolist()) == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="hold out"):
        class_disjoint_split([1, 2], count=2)


def test_superclass_trains_on_coarse_labels():
    t = fmnist_like()
    s = make_splits(t, ProtocolConfig(name="superclass"))
    assert set(np.unique(s.train_labels[s.train])) == {0, 1, 2}
    assert set(np.unique(t.labels[s.train])) == set(range(10))
    assert (t.split[s.test] == "test").all()
    assert s.coarse_labels[t.labels == 7][0] == 1  # sneaker → footwear
    digits = load_dataset("digits")
    sd = make_splits(digits, ProtocolConfig(name="superclass", test_fraction=0.5, val_by="none"))
    assert set(np.unique(sd.train_labels[sd.train])) == {0, 1}
    assert abs(len(sd.test) - 1797 / 2) < 12
    custom = make_splits(digits, ProtocolConfig(name="superclass", coarse_map={i: int(i >= 5) for i in range(10)}))
    assert custom.train_labels[digits.labels == 7][0] == 1
    with pytest.raises(ValueError, match="no entry for classes"):
        make_splits(digits, ProtocolConfig(name="superclass", coarse_map={0: 0}))


def test_official_requires_a_split():
    with pytest.raises(ValueError, match="defines no train/test split"):
        make_splits(load_dataset("digits"), ProtocolConfig(name="official"))
    with pytest.raises(ValueError, match="val_by=images"):
        make_splits(load_dataset("digits"), ProtocolConfig(train_classes=[0, 1], val_by="classes"))


def test_a_dataset_without_a_split_defaults_to_a_seed_independent_class_split():
    """A folder of the user's own classes: half the classes (test_fraction) held out for test, the same classes
    whatever the run seed; validation carved from the training classes."""
    labels = np.repeat(np.arange(20), 5)
    table = ImageTable(name="folder", labels=labels, split=np.full(len(labels), "all", dtype=object),
                       images=torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8))  # fmt: skip
    a = make_splits(table, ProtocolConfig(), seed=0)
    b = make_splits(table, ProtocolConfig(name="zero_shot"), seed=7)
    assert a.protocol == "zero_shot"
    test_classes = np.unique(labels[a.test])
    assert len(test_classes) == 10 and np.array_equal(test_classes, np.unique(labels[b.test]))
    seen = np.unique(labels[np.concatenate([a.train, a.val])])
    assert not np.intersect1d(seen, test_classes).size and len(seen) == 10
    quarter = make_splits(table, ProtocolConfig(name="zero_shot", test_fraction=0.25), seed=0)
    assert len(np.unique(labels[quarter.test])) == 5

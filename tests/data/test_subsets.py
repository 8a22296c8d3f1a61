"""Seeded per-class subsets and train/validation splits."""

from __future__ import annotations

import numpy as np
import pytest

from testtime.data import ImageSplit, subset_per_class, train_val_split


def make_split(counts=(30, 20, 10)) -> ImageSplit:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    images = np.arange(len(labels), dtype=np.int64).astype(np.uint8).reshape(-1, 1, 1, 1)  # row id as pixel
    images = np.repeat(images, 3, axis=3)  # (N, 1, 1, 3)
    return ImageSplit(images, labels, ("a", "b", "c"), "toy")


def test_subset_per_class_is_seeded_and_balanced():
    s = make_split()
    a, b, c = subset_per_class(s, 5, seed=0), subset_per_class(s, 5, seed=0), subset_per_class(s, 5, seed=1)
    assert np.bincount(a.labels).tolist() == [5, 5, 5]
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    rows = a.images[:, 0, 0, 0]
    assert np.all(np.diff(rows) > 0)  # original order kept, no duplicates
    assert np.array_equal(s.labels[rows], a.labels)  # the images travel with their labels
    assert a.meta["seed"] == 0 and a.meta["per_class"] == 5


def test_subset_errors():
    s = make_split()
    with pytest.raises(ValueError, match="n=11: class 'c' of toy has only 10 images"):
        subset_per_class(s, 11, seed=0)
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        subset_per_class(s, 0, seed=0)
    with pytest.raises(ValueError, match="seed: expected a non-negative integer"):
        subset_per_class(s, 2, seed=-1)


def test_train_val_split_stratified():
    s = make_split()
    tr, va = train_val_split(s, 0.2, seed=3)
    assert np.bincount(va.labels).tolist() == [6, 4, 2] and len(tr) + len(va) == len(s)
    rows_tr, rows_va = set(tr.images[:, 0, 0, 0].tolist()), set(va.images[:, 0, 0, 0].tolist())
    assert not rows_tr & rows_va and len(rows_tr | rows_va) == len(s)
    tr2, va2 = train_val_split(s, 0.2, seed=3)
    assert np.array_equal(va.images, va2.images)
    _, va3 = train_val_split(s, 0.2, seed=4)
    assert not np.array_equal(va.images, va3.images)
    assert va.meta["part"] == "val" and tr.name == "toy[train]"


def test_train_val_split_plain_and_errors():
    s = make_split()
    tr, va = train_val_split(s, 0.5, seed=0, stratified=False)
    assert len(va) == 30 and len(tr) == 30
    for bad in (0, 1, 1.5, -0.1, "0.2"):
        with pytest.raises(ValueError, match="val_fraction: expected a number in \\(0, 1\\)"):
            train_val_split(s, bad, seed=0)
    with pytest.raises(ValueError, match="empty train or val part"):
        train_val_split(s, 0.001, seed=0)

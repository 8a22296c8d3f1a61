"""Image-folder trees: decoding, classes, the cache, and every bad-input case."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from official_layouts import write_image_tree
from PIL import Image

from testtime.data import DatasetError, load_dataset


def test_real_cifar10_jpeg_test_split(cifar10_jpeg, tmp_path):
    s = load_dataset("imagefolder", "test", root=cifar10_jpeg, cache_dir=tmp_path / "c")
    assert s.images.shape == (10000, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.num_classes == 10 and s.classes[0] == "airplane" and s.classes[-1] == "truck"
    assert np.bincount(s.labels).tolist() == [1000] * 10
    again = load_dataset("imagefolder", "test", root=cifar10_jpeg, cache_dir=tmp_path / "c")
    assert "cache" in again.meta and np.array_equal(again.images, s.images)
    assert np.array_equal(again.labels, s.labels)


@pytest.mark.slow
def test_real_cifar10_jpeg_train_split(cifar10_jpeg, tmp_path):
    s = load_dataset("imagefolder", "train", root=cifar10_jpeg, cache_dir=tmp_path / "c")
    assert s.images.shape == (50000, 32, 32, 3) and np.bincount(s.labels).tolist() == [5000] * 10
    assert 100 < s.images.mean() < 140  # natural images (CIFAR-10 mean is about 121), not noise


def test_tree_roundtrip_sorted_classes(tmp_path):
    written = write_image_tree(tmp_path / "tree", {"zebra": 2, "ant": 3})
    s = load_dataset("imagefolder", root=tmp_path / "tree")
    assert s.classes == ("ant", "zebra") and s.labels.tolist() == [0, 0, 0, 1, 1]
    assert s.images.shape == (5, 6, 8, 3)
    assert np.array_equal(s.images[0], written["ant"][0]) and np.array_equal(s.images[4], written["zebra"][1])


def test_split_subfolder_and_missing_split(tmp_path):
    write_image_tree(tmp_path / "ds" / "train", {"a": 2, "b": 1})
    write_image_tree(tmp_path / "ds" / "test", {"a": 1, "b": 1})
    assert len(load_dataset("imagefolder", "train", root=tmp_path / "ds")) == 3
    assert len(load_dataset("imagefolder", "test", root=tmp_path / "ds")) == 2
    with pytest.raises(DatasetError, match="split 'val' not found.*found: test, train"):
        load_dataset("imagefolder", "val", root=tmp_path / "ds")


def test_grey_and_rgba_become_rgb(tmp_path):
    (tmp_path / "t" / "a").mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 7, np.uint8), "L").save(tmp_path / "t" / "a" / "g.png")
    Image.fromarray(np.full((4, 4, 4), 9, np.uint8), "RGBA").save(tmp_path / "t" / "a" / "r.png")
    s = load_dataset("imagefolder", root=tmp_path / "t")
    assert s.images.shape == (2, 4, 4, 3) and s.images[0].max() == 7 and s.images[1].min() == 9


def test_cache_second_load_and_invalidation(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 3, "b": 3}, ext="jpg")
    cache = tmp_path / "c"
    first = load_dataset("imagefolder", root=tmp_path / "t", cache_dir=cache)
    assert "cache" not in first.meta
    files = sorted(p.name for p in (cache / "splits").iterdir())
    assert len(files) == 3 and {f.split(".", 1)[1] for f in files} == {"images.npy", "labels.npy", "json"}
    second = load_dataset("imagefolder", root=tmp_path / "t", cache_dir=cache)
    assert "cache" in second.meta and np.array_equal(first.images, second.images)
    # changing a file changes the key: the new content is decoded, not the stale entry read
    target = tmp_path / "t" / "b" / "0000.jpg"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_dataset("imagefolder", root=tmp_path / "t", cache_dir=cache)
    assert "cache" not in third.meta and third.images[3].max() < 10
    assert len(list((cache / "splits").glob("*.json"))) == 2


def test_cache_default_dir_is_testtime_cache(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 1})
    load_dataset("imagefolder", root=tmp_path / "t")
    assert len(list((tmp_path / "cache" / "splits").glob("*.json"))) == 1  # $TESTTIME_CACHE (conftest)


def test_cache_disabled_writes_nothing(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 1})
    load_dataset("imagefolder", root=tmp_path / "t", cache=False)
    assert not (tmp_path / "cache").exists()


def test_mixed_sizes_error_names_file(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 2}, size=(8, 8))
    Image.fromarray(np.zeros((5, 9, 3), np.uint8)).save(tmp_path / "t" / "a" / "0009.png")
    with pytest.raises(DatasetError, match=r"0009.png is 9x5 \(WxH\) but the images before it are 8x8"):
        load_dataset("imagefolder", root=tmp_path / "t")


def test_empty_class_folder(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 2})
    (tmp_path / "t" / "b").mkdir()
    with pytest.raises(DatasetError, match=f"empty class folder {tmp_path / 't' / 'b'}"):
        load_dataset("imagefolder", root=tmp_path / "t")


def test_non_image_file_warn_skips(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 2, "b": 1})
    (tmp_path / "t" / "a" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="skipped 1 non-image.*notes.txt"):
        s = load_dataset("imagefolder", root=tmp_path / "t", on_bad_file="warn")
    assert len(s) == 3
    with pytest.warns(UserWarning, match="notes.txt"):  # cached load still says so
        assert len(load_dataset("imagefolder", root=tmp_path / "t")) == 3


def test_non_image_file_error(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 2})
    (tmp_path / "t" / "a" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="non-image file .*notes.txt"):
        load_dataset("imagefolder", root=tmp_path / "t", on_bad_file="error")


def test_undecodable_image_both_flags(tmp_path):
    write_image_tree(tmp_path / "t", {"a": 2})
    (tmp_path / "t" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match="cannot decode image .*broken.jpg"):
        load_dataset("imagefolder", root=tmp_path / "t", on_bad_file="error")
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert len(load_dataset("imagefolder", root=tmp_path / "t", on_bad_file="warn")) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="on_bad_file: expected one of warn, error, got 'skip'"):
        load_dataset("imagefolder", root=tmp_path, on_bad_file="skip")
    with pytest.raises(ValueError, match="root: dataset imagefolder needs an explicit root"):
        load_dataset("imagefolder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagefolder", root=tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset("imagefolder", root=tmp_path / "flat")

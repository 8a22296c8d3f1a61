"""CIFAR-10-C / CIFAR-100-C and Tiny-ImageNet(-C) in the published layouts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from testtime.data import DatasetError, find_dataset, load_dataset


def write_cifar_c(folder, corruptions=("fog", "gaussian_noise"), block=6, labels_rows=None, seed=0):
    """``<corruption>.npy`` (5 * block, 32, 32, 3) uint8 + ``labels.npy`` (5 * block,), severities in blocks."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.tile(rng.integers(0, 10, block), 5).astype(np.int64)  # same test labels in each block
    np.save(folder / "labels.npy", labels[:labels_rows] if labels_rows else labels)
    out = {}
    for c in corruptions:
        data = rng.integers(0, 256, (5 * block, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{c}.npy", data)
        out[c] = data
    return out, labels


def test_cifar10_c_blocks(tmp_path):
    data, labels = write_cifar_c(tmp_path / "CIFAR-10-C", block=6)
    for sev in (1, 3, 5):
        s = load_dataset("cifar10-c", corruption="fog", severity=sev, root=tmp_path)
        assert s.images.shape == (6, 32, 32, 3)
        assert np.array_equal(s.images, data["fog"][(sev - 1) * 6 : sev * 6])
        assert np.array_equal(s.labels, labels[:6]) and s.name == f"cifar10-c/fog/{sev}"
        assert s.images.flags.writeable and not isinstance(s.images, np.memmap)
    assert load_dataset("cifar10-c", corruption="gaussian_noise", root=tmp_path).meta["severity"] == 5


def test_cifar100_c_and_short_labels(tmp_path, monkeypatch):
    data, labels = write_cifar_c(tmp_path / "home" / "CIFAR-100-C", corruptions=("snow",), block=4, labels_rows=4)
    monkeypatch.setenv("TESTTIME_DATA", str(tmp_path / "home"))
    s = load_dataset("cifar100-c", corruption="snow", severity=2)
    assert len(s.classes) == 100 and np.array_equal(s.images, data["snow"][4:8])
    assert np.array_equal(s.labels, labels[:4])


def test_cifar_c_bad_arguments_before_any_read(tmp_path):
    with pytest.raises(ValueError, match="corruption: expected one of gaussian_noise"):
        load_dataset("cifar10-c", corruption="rain", root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="severity: expected an integer in 1..5, got 6"):
        load_dataset("cifar10-c", corruption="fog", severity=6, root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="corruption: required"):
        load_dataset("cifar10-c", root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="split: cifar10-c has splits test; got 'train'"):
        load_dataset("cifar10-c", "train", corruption="fog")


def test_cifar_c_missing_corruption_file(tmp_path):
    write_cifar_c(tmp_path, corruptions=("fog",))
    with pytest.raises(FileNotFoundError, match="snow.npy not found; corruptions present.*fog"):
        load_dataset("cifar10-c", corruption="snow", root=tmp_path)


def test_cifar_c_count_mismatch(tmp_path):
    write_cifar_c(tmp_path, block=6)
    np.save(tmp_path / "labels.npy", np.zeros(29, np.int64))
    with pytest.raises(DatasetError, match="count mismatch: fog.npy holds 30 images, labels.npy 29"):
        load_dataset("cifar10-c", corruption="fog", root=tmp_path)


def test_cifar_c_not_five_blocks_and_truncated(tmp_path):
    write_cifar_c(tmp_path, block=6)
    np.save(tmp_path / "fog.npy", np.zeros((29, 32, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match="29 rows is not 5 equal severity blocks"):
        load_dataset("cifar10-c", corruption="fog", root=tmp_path)
    raw = (tmp_path / "gaussian_noise.npy").read_bytes()
    (tmp_path / "gaussian_noise.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="gaussian_noise.npy: not a readable .npy array"):
        load_dataset("cifar10-c", corruption="gaussian_noise", root=tmp_path)


def test_cifar_c_pickled_npy_refused(tmp_path):
    write_cifar_c(tmp_path)
    np.save(tmp_path / "fog.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="fog.npy: not a readable .npy array"):
        load_dataset("cifar10-c", corruption="fog", root=tmp_path)


def write_tiny_imagenet(root, wnids=("n02", "n01", "n03"), n_train=2, n_val=2, seed=0):
    """``root/tiny-imagenet-200``: wnids.txt, words.txt, train/<wnid>/images/*.JPEG (+ boxes), val/."""
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids) + "n99\tunused\n")
    ann = []
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(n_train):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    for i in range(n_val * len(wnids)):
        w = wnids[i % len(wnids)]
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            base / "val" / "images" / f"val_{i}.JPEG"
        )
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return base


def test_tiny_imagenet_train_and_val(tmp_path):
    write_tiny_imagenet(tmp_path)
    tr = load_dataset("tiny-imagenet", "train", root=tmp_path)
    assert tr.images.shape == (6, 64, 64, 3) and tr.classes == ("n01", "n02", "n03")
    assert tr.labels.tolist() == [0, 0, 1, 1, 2, 2] and tr.meta["words"][0] == "thing n01"
    va = load_dataset("tiny-imagenet", "val", root=tmp_path)
    assert va.labels.tolist() == [1, 0, 2, 1, 0, 2]  # val_0 is n02 = label 1 in sorted order
    again = load_dataset("tiny-imagenet", "val", root=tmp_path)
    assert "cache" in again.meta and np.array_equal(again.images, va.images)
    with pytest.raises(ValueError, match="split: tiny-imagenet has splits train, val"):
        load_dataset("tiny-imagenet", "test", root=tmp_path)


def test_tiny_imagenet_bad_annotations(tmp_path):
    base = write_tiny_imagenet(tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="val_annotations.txt:1: expected"):
        load_dataset("tiny-imagenet", "val", root=tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_99.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match="val_99.JPEG"):
        load_dataset("tiny-imagenet", "val", root=tmp_path)


def test_tiny_imagenet_c(tmp_path):
    rng = np.random.default_rng(0)
    for sev in (1, 5):
        for w in ("n01", "n02"):
            d = tmp_path / "Tiny-ImageNet-C" / "fog" / str(sev) / w
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"val_{i}.JPEG")
    found, _ = find_dataset("tiny-imagenet-c", tmp_path)
    assert found == tmp_path / "Tiny-ImageNet-C"
    s = load_dataset("tiny-imagenet-c", corruption="fog", severity=5, root=tmp_path)
    assert s.images.shape == (6, 64, 64, 3) and s.classes == ("n01", "n02") and s.name == "tiny-imagenet-c/fog/5"
    assert s.meta["severity"] == 5
    with pytest.raises(FileNotFoundError, match="fog/3 not found; corruptions present in .*: fog"):
        load_dataset("tiny-imagenet-c", corruption="fog", severity=3, root=tmp_path)

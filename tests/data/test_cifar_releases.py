"""CIFAR-10 / CIFAR-100, binary and python versions, in the official layouts; the restricted unpickler."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from official_layouts import (
    py2_pickle,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_cifar100_python,
)

from testtime.data import DatasetError, find_dataset, load_dataset
from testtime.data.cifar import safe_unpickle


@pytest.mark.parametrize("writer", [write_cifar10_python, write_cifar10_binary])
def test_cifar10_both_versions(tmp_path, writer):
    written = writer(tmp_path, n_per_batch=4)
    for split, n in (("train", 20), ("test", 4)):
        s = load_dataset("cifar10", split, root=tmp_path)
        images, labels = written[split]
        assert s.images.shape == (n, 32, 32, 3) and s.images.dtype == np.uint8
        assert np.array_equal(s.images, images) and np.array_equal(s.labels, labels)
        assert s.classes[0] == "airplane" and len(s.classes) == 10 and s.name == f"cifar10/{split}"


@pytest.mark.parametrize("writer", [write_cifar100_python, write_cifar100_binary])
def test_cifar100_both_versions_fine_and_coarse(tmp_path, writer):
    written = writer(tmp_path, n=6)
    images, fine, coarse = written["test"]
    s = load_dataset("cifar100", "test", root=tmp_path)
    assert np.array_equal(s.images, images) and np.array_equal(s.labels, fine)
    assert len(s.classes) == 100 and s.classes[3] == "fine_3"
    c = load_dataset("cifar100", "test", root=tmp_path, labels="coarse")
    assert np.array_equal(c.labels, coarse) and len(c.classes) == 20
    with pytest.raises(ValueError, match="labels: expected one of fine, coarse"):
        load_dataset("cifar100", "test", root=tmp_path, labels="medium")


def test_found_through_testtime_data(tmp_path, monkeypatch):
    write_cifar10_python(tmp_path / "home" / "cifar10")
    monkeypatch.setenv("TESTTIME_DATA", str(tmp_path / "home"))
    found, _ = find_dataset("cifar10")
    assert found == tmp_path / "home" / "cifar10" / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", "test")) == 4


def test_python3_written_pickle_also_loads(tmp_path):
    """A re-saved (Python 3, protocol 4, bytes keys) batch holds the same kinds of objects."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rows, b"labels": [3, 4]}, protocol=4))
    s = load_dataset("cifar10", "test", root=folder)
    assert s.labels.tolist() == [3, 4] and s.images[0, 0, 0].tolist() == [0, 0, 0]
    assert s.images[0, 0, 1].tolist() == [1, 1, 1]  # R, G, B planes are 1024 apart: 1024 % 256 = 0


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    write_cifar10_python(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    py2_pickle(batch, {b"data": _Evil(marker), b"labels": [0]})  # as a tampered official file
    with pytest.raises(DatasetError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()
    # the same guard protects the meta file
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        safe_unpickle(tmp_path / "cifar-10-batches-py" / "batches.meta")
    assert not marker.exists()


def test_other_globals_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(pickle.dumps({"f": io.BytesIO}, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to unpickle _io\.BytesIO"):
        safe_unpickle(path)


def test_truncated_python_batch(tmp_path):
    write_cifar10_python(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="truncated or corrupt pickle"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_python_batch_count_mismatch(tmp_path):
    write_cifar10_python(tmp_path)
    rows = np.zeros((3, 3072), np.uint8)
    py2_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": rows, b"labels": [1, 2]})
    with pytest.raises(DatasetError, match="count mismatch: 3 images, 2 labels"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_python_batch_missing_key_and_wrong_shape(tmp_path):
    write_cifar10_python(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    py2_pickle(path, {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetError, match="key 'labels' missing"):
        load_dataset("cifar10", "test", root=tmp_path)
    py2_pickle(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"'data' must be a uint8 array \(N, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_truncated_binary_batch(tmp_path):
    write_cifar10_binary(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte records"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_missing_train_batch(tmp_path):
    write_cifar10_binary(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin not found"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_label_out_of_range(tmp_path):
    write_cifar10_binary(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 12
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="label 12 out of range for 10 classes"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset cifar10 not found.*cifar-10-batches-py"):
        load_dataset("cifar10", "test", root=tmp_path)

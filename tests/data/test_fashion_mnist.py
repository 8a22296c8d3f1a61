"""Fashion-MNIST from IDX files: the real Debian files, and files in the official layout with bad content."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from official_layouts import write_fashion_mnist, write_idx

from testtime.data import DatasetError, find_dataset, load_dataset
from testtime.data.idx import read_idx


def test_real_fashion_mnist(fashion_mnist_dir):
    test = load_dataset("fashion-mnist", "test", root=fashion_mnist_dir)
    assert test.images.shape == (10000, 28, 28, 1) and test.images.dtype == np.uint8
    assert test.labels.dtype == np.int64 and np.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"
    assert test.name == "fashion-mnist/test"
    train = load_dataset("fashion-mnist", "train")  # found by the search, not by root
    assert train.images.shape == (60000, 28, 28, 1) and np.bincount(train.labels).tolist() == [6000] * 10
    assert 60 < train.images.mean() < 90  # real clothing images, not noise (mean ~73)


def test_search_order_prefers_env_over_debian(tmp_path, monkeypatch):
    home = tmp_path / "env-data"
    write_fashion_mnist(home / "fashion-mnist")
    monkeypatch.setenv("TESTTIME_DATA", str(home))
    found, searched = find_dataset("fashion-mnist")
    assert found == home / "fashion-mnist"
    assert searched.index(home / "fashion-mnist") < searched.index(
        __import__("pathlib").Path("/usr/share/datasets/fashion-mnist")
    )


def test_official_layout_roundtrip(tmp_path):
    written = write_fashion_mnist(tmp_path / "fm", n_train=12, n_test=8)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        s = load_dataset("fashion-mnist", split, root=tmp_path / "fm")
        images, labels = written[prefix]
        assert np.array_equal(s.images[..., 0], images) and np.array_equal(s.labels, labels)
        assert s.images.flags.writeable


def test_uncompressed_idx_files(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), gz=False)
    s = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert np.array_equal(s.images[..., 0], images) and s.labels.tolist() == [0, 1, 2, 3, 4]


def test_wrong_magic(tmp_path):
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((8, 28, 28)), magic=0x00000801)
    with pytest.raises(DatasetError, match="wrong IDX magic number 0x00000801, expected 0x00000803"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_count_mismatch(tmp_path):
    write_fashion_mnist(tmp_path, n_test=8)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(DatasetError, match="count mismatch.*8 images.*7 labels"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_truncated_data(tmp_path):
    write_fashion_mnist(tmp_path, n_test=8)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match="truncated: header says"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_truncated_gzip(tmp_path):
    write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="truncated or corrupt gzip"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_truncated_header(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes((0x0803).to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(path, 3)


def test_missing_file(tmp_path):
    write_fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "train", root=tmp_path)


def test_not_found_lists_searched(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"searched: {tmp_path / 'nowhere'}"):
        load_dataset("fashion-mnist", "test", root=tmp_path / "nowhere")


def test_bad_split_and_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="split: fashion-mnist has splits train, test; got 'val'"):
        load_dataset("fashion-mnist", "val")
    with pytest.raises(KeyError, match="unknown dataset 'mnist'; valid: .*fashion-mnist.*imagefolder"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown option.*severity"):
        load_dataset("fashion-mnist", "test", severity=3)

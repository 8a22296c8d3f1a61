"""Malformed files fail in one line, or are rebuilt when they are only a cache (issue 9, must-fix 6)."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testtime.data import load_dataset
from testtime.data.cifar import safe_unpickle
from testtime.data.errors import DatasetError


def _cifar_c(root: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(root / "fog.npy", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.tile(np.arange(2, dtype=np.uint8), 5))
    return root


@pytest.mark.parametrize("victim", ["fog.npy", "labels.npy"])
def test_zero_byte_npy_is_one_line(tmp_path, victim):
    _cifar_c(tmp_path)
    (tmp_path / victim).write_bytes(b"")
    with pytest.raises(DatasetError, match=f"{victim}: empty file \\(0 bytes\\)"):
        load_dataset("cifar10-c", root=tmp_path, corruption="fog", severity=1)


def test_gif_named_npy_says_what_it_is(tmp_path):
    _cifar_c(tmp_path)
    (tmp_path / "fog.npy").write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(DatasetError, match="not a .npy file \\(it starts with b'GIF89a'"):
        load_dataset("cifar10-c", root=tmp_path, corruption="fog", severity=1)


def _folder(root: Path, n: int = 2) -> Path:
    for c in range(2):
        (root / "test" / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 100 * c + i, np.uint8)).save(root / "test" / f"c{c}" / f"{i}.png")
    return root


def test_zero_byte_cache_entry_is_rebuilt(tmp_path):
    root = _folder(tmp_path / "imgs")
    first = load_dataset("imagefolder", root=root)
    entries = sorted((tmp_path / "cache" / "splits").glob("*.npy"))
    assert len(entries) == 2
    for e in entries:
        e.write_bytes(b"")  # a full disk, a killed copy
    again = load_dataset("imagefolder", root=root)
    assert np.array_equal(again.images, first.images) and all(e.stat().st_size > 0 for e in entries)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (8-bit RGB) but holds no pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_is_one_line(tmp_path):
    root = _folder(tmp_path / "imgs")
    _png_header_only(root / "test" / "c0" / "bomb.png", 20000, 20000)
    with pytest.raises(DatasetError, match="bomb.png.*decompression bomb"):
        load_dataset("imagefolder", root=root, on_bad_file="error")
    with pytest.warns(UserWarning, match="skipped 1 .*bomb.png"):
        split = load_dataset("imagefolder", root=root, on_bad_file="warn", cache=False)
    assert len(split) == 4


class _HugeArray:
    def __reduce__(self):
        return (np.ndarray, ((200_000, 200_000, 100),))  # 4 TB if called


class _HugeReconstruct:
    def __reduce__(self):
        from testtime.data.cifar import _numpy_reconstruct

        return (_numpy_reconstruct(), (np.ndarray, (200_000, 200_000, 100), b"b"))


@pytest.mark.parametrize("evil", [_HugeArray(), _HugeReconstruct()])
def test_cifar_pickle_asking_for_a_huge_array_is_refused_before_allocating(tmp_path, evil):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": evil, "labels": [0]}, protocol=4))
    with pytest.raises(DatasetError, match="test_batch: truncated or corrupt pickle"):
        safe_unpickle(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_valid_cifar_pickle_of_any_protocol_is_read(tmp_path, protocol):
    path = tmp_path / "test_batch"
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2], b"batch_label": b"x"}, protocol=protocol))
    d = safe_unpickle(path)
    assert np.array_equal(d["data"], data) and d["labels"] == [1, 2]


def test_missing_labels_npy_is_named(tmp_path):
    _cifar_c(tmp_path)
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy is missing beside fog.npy"):
        load_dataset("cifar10-c", root=tmp_path, corruption="fog", severity=1)


@pytest.mark.parametrize("entry", ["../../escape.JPEG", "sub/val_0.JPEG", ".."])
def test_tiny_imagenet_annotations_with_paths_are_refused(tmp_path, entry):
    from testtime.data.corrupted import load_tiny_imagenet

    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "wnids.txt").write_text("n01\nn02\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "escape.JPEG")
    (tmp_path / "val" / "val_annotations.txt").write_text(f"{entry}\tn01\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="is not a plain file name"):
        load_tiny_imagenet(tmp_path, "val", cache=False)


def test_not_found_message_names_the_command_line_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--root on the command line"):
        load_dataset("cifar10", root=None)

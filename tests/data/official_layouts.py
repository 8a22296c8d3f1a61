"""Writers of small files in the official layouts, used by the data tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, gz: bool = True) -> Path:
    """An unsigned-byte IDX file (optionally gzip): magic 0x0000080<ndim>, big-endian dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz") if not path.name.endswith(".gz") else path
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_fashion_mnist(folder: Path, n_train: int = 12, n_test: int = 8, seed: int = 0) -> dict:
    """The four Fashion-MNIST files with random content; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


def write_image_tree(
    root: Path, classes: dict[str, int], size: tuple[int, int] = (8, 6), ext: str = "png", seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """``root/<class>/<i>.<ext>`` with random RGB images of ``size`` = (W, H); PNG is lossless."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for i in range(n):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i:04d}.{ext}")
            out[cls].append(arr)
    return out

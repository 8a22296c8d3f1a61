"""Fashion-MNIST (and any MNIST-style dataset) from the standard IDX files.

IDX format (LeCun et al.): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension, then the data. Images are
``idx3`` (N, 28, 28), labels ``idx1`` (N,). Files may be gzip-compressed (``.gz``).

Example::

    split = load_fashion_mnist("/usr/share/datasets/fashion-mnist", "test")
    split.images.shape    # (10000, 28, 28, 1)
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from testtime.data.errors import DatasetError
from testtime.data.names import FASHION_MNIST_CLASSES
from testtime.data.split import ImageSplit

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem`` (uncompressed), whichever exists first; else None."""
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions; a clear DatasetError when malformed."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    magic = int.from_bytes(raw[:4], "big")
    want = 0x0800 | ndim
    if magic != want:
        raise DatasetError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{want:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have != need:
        kind = "truncated" if have < need else "too long"
        raise DatasetError(f"{path}: {kind}: header says {dims} = {need} bytes of data, file holds {have}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def is_fashion_mnist_dir(folder: Path) -> bool:
    return all(idx_file(folder, stem) is not None for stem in FASHION_MNIST_FILES["test"])


def load_fashion_mnist(folder: str | Path, split: str = "test") -> ImageSplit:
    """Fashion-MNIST ``split`` ("train": 60,000, "test": 10,000) from ``folder``: grey (N, 28, 28, 1).

    Xiao, Rasul & Vollgraf (2017), Fashion-MNIST. Raises DatasetError on a malformed file and
    FileNotFoundError when a file is missing.
    """
    folder = Path(folder)
    img_stem, lab_stem = FASHION_MNIST_FILES[split]
    paths = []
    for stem in (img_stem, lab_stem):
        p = idx_file(folder, stem)
        if p is None:
            raise FileNotFoundError(f"Fashion-MNIST: {folder / stem}.gz (or uncompressed) not found")
        paths.append(p)
    images = read_idx(paths[0], 3)
    labels = read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise DatasetError(
            f"Fashion-MNIST {split}: image/label count mismatch: {paths[0].name} holds {len(images)} "
            f"images, {paths[1].name} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{paths[1]}: label {labels.max()} out of range [0, {len(FASHION_MNIST_CLASSES)})")
    return ImageSplit(
        images=np.array(images[..., None]),  # (N, 28, 28) -> (N, 28, 28, 1), a writable copy
        labels=labels.astype(np.int64),
        classes=FASHION_MNIST_CLASSES,
        name=f"fashion-mnist/{split}",
        meta={"path": str(folder), "files": [str(p) for p in paths]},
    )

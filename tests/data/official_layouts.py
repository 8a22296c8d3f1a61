"""Writers of small files in the official layouts, used by the data tests."""

from __future__ import annotations

import gzip
import pickle
import struct
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


# --- CIFAR ------------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles the way Python 2's cPickle did for the CIFAR python version.

    ``bytes`` become Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING) and numpy's array
    reconstructor is named ``numpy.core.multiarray._reconstruct``, as in the official files.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, 3072) uint8 rows and the (n, 32, 32, 3) images they encode (R plane, G, B)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # (n, 3, 32, 32) -> (n, 3072)
    return rows, images


def write_cifar10_python(root: Path, n_per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch, batches.meta (Python 2 pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": ([], []), "test": ([], [])}
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows, images = cifar_rows(n_per_batch, seed=i)
        labels = [int(x) for x in np.random.default_rng(100 + i).integers(0, 10, n_per_batch)]
        d = {b"batch_label": b"batch " + str(i).encode(), b"labels": labels, b"data": rows,
             b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)]}  # fmt: skip
        py2_pickle(folder / fname, d)
        part = "test" if fname == "test_batch" else "train"
        out[part][0].append(images)
        out[part][1].append(np.array(labels))
    py2_pickle(
        folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    )
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in out.items()}


def write_cifar10_binary(root: Path, n_per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-bin``: data_batch_{1..5}.bin, test_batch.bin, batches.meta.txt."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": ([], []), "test": ([], [])}
    for i, fname in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        rows, images = cifar_rows(n_per_batch, seed=i)
        labels = np.random.default_rng(100 + i).integers(0, 10, n_per_batch).astype(np.uint8)
        (folder / fname).write_bytes(np.concatenate([labels[:, None], rows], axis=1).tobytes())
        part = "test" if fname == "test_batch.bin" else "train"
        out[part][0].append(images)
        out[part][1].append(labels.astype(np.int64))
    (folder / "batches.meta.txt").write_text("\n".join(n.decode() for n in CIFAR10_NAMES) + "\n\n")
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in out.items()}


def cifar100_names(kind: str) -> list[bytes]:
    return [f"{kind}_{i}".encode() for i in range(100 if kind == "fine" else 20)]


def write_cifar100_python(root: Path, n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``root/cifar-100-python``: train, test, meta (Python 2 pickles); returns images, fine, coarse."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, fname in enumerate(["train", "test"]):
        rows, images = cifar_rows(n, seed=10 + i)
        rng = np.random.default_rng(200 + i)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        d = {b"filenames": [b"x.png"] * n, b"batch_label": fname.encode(), b"fine_labels": [int(x) for x in fine],
             b"coarse_labels": [int(x) for x in coarse], b"data": rows}  # fmt: skip
        py2_pickle(folder / fname, d)
        out[fname] = (images, fine, coarse)
    py2_pickle(
        folder / "meta", {b"fine_label_names": cifar100_names("fine"), b"coarse_label_names": cifar100_names("coarse")}
    )
    return out


def write_cifar100_binary(root: Path, n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``root/cifar-100-binary``: train.bin, test.bin (coarse byte, fine byte, pixels), label name files."""
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, fname in enumerate(["train", "test"]):
        rows, images = cifar_rows(n, seed=20 + i)
        rng = np.random.default_rng(300 + i)
        fine, coarse = rng.integers(0, 100, n).astype(np.uint8), rng.integers(0, 20, n).astype(np.uint8)
        (folder / f"{fname}.bin").write_bytes(np.concatenate([coarse[:, None], fine[:, None], rows], axis=1).tobytes())
        out[fname] = (images, fine.astype(np.int64), coarse.astype(np.int64))
    (folder / "fine_label_names.txt").write_text("\n".join(n.decode() for n in cifar100_names("fine")) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(n.decode() for n in cifar100_names("coarse")) + "\n")
    return out

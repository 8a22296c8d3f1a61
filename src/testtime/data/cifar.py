"""CIFAR-10 and CIFAR-100 from the official releases (binary and python versions).

Layouts (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html):

* CIFAR-10 binary, ``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin``,
  ``test_batch.bin`` (records of 1 label byte + 3072 pixel bytes: 1024 R, 1024 G, 1024 B, row-major),
  ``batches.meta.txt`` (one class name per line).
* CIFAR-100 binary, ``cifar-100-binary/``: ``train.bin``, ``test.bin`` (records of a coarse label
  byte, a fine label byte, 3072 pixel bytes), ``fine_label_names.txt``, ``coarse_label_names.txt``.
* Python versions, ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``): Python 2 pickles of
  dicts with keys ``data`` ((N, 3072) uint8 array), ``labels`` / ``fine_labels`` / ``coarse_labels``
  (lists of ints) and, in the meta file, ``label_names`` / ``fine_label_names`` /
  ``coarse_label_names``. They are read with a restricted unpickler that admits only the numpy
  array reconstruction those files need (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``): any other global (e.g. ``os.system``) is refused before it is called.

Example::

    test = load_cifar("/data/cifar-10-batches-py", "test", num_classes=10)
    test.images.shape      # (10000, 32, 32, 3)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from testtime.data.errors import DatasetError
from testtime.data.names import CIFAR10_CLASSES, CIFAR100_CLASSES
from testtime.data.split import ImageSplit

PIXELS = 3 * 32 * 32

CIFAR10_PY = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_BIN = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR100_PY = {"train": ["train"], "test": ["test"]}
CIFAR100_BIN = {"train": ["train.bin"], "test": ["test.bin"]}
CIFAR10_FOLDERS = ("cifar-10-batches-py", "cifar-10-batches-bin")
CIFAR100_FOLDERS = ("cifar-100-python", "cifar-100-binary")
LABEL_TYPES = ("fine", "coarse")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


MAX_PICKLED_BYTES = 1 << 30  # the largest array a CIFAR pickle may describe (the releases hold 30.7 MB)


class _NdarrayType:
    """``numpy.ndarray`` as the pickle names it: usable only as ``_reconstruct``'s subtype, never called
    (a pickle that calls ``numpy.ndarray(shape)`` could ask for terabytes before any check)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("the pickle calls numpy.ndarray(...) directly, which no CIFAR release does")


_NDARRAY = _NdarrayType()


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays of a bounded size (checked before allocating)."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    size = int(np.prod(dims, dtype=object)) * np.dtype(np.uint8 if isinstance(dtype, bytes) else dtype).itemsize
    if size > MAX_PICKLED_BYTES:
        raise pickle.UnpicklingError(f"an array of shape {shape} ({size / 2**30:.0f} GiB) is larger than any release")
    return _numpy_reconstruct()(np.ndarray, shape, dtype)


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it for bytes (latin1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} (only the latin1 of bytes objects is read)")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,  # bytes in a protocol-2 pickle written by Python 3
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only numpy array reconstruction; every other global is refused with a DatasetError."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise DatasetError(
                f"{self._path}: refusing to unpickle {module}.{name}: a CIFAR python-version file holds "
                "only dicts, lists, strings and numpy arrays (the file is not an official release, "
                "or it was tampered with)"
            )
        return obj


def safe_unpickle(path: Path) -> dict[str, Any]:
    """Read a CIFAR python-version pickle without executing code; keys are returned as str."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError, MemoryError,
            OverflowError) as exc:
        raise DatasetError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(values: Any, path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        raise DatasetError(f"{path}: key {key!r} must be a list of names")
    return tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values)


def _images_from_rows(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, 3072) -> (N, 32, 32, 3)


def _read_python(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR python version: {path} not found")
        d = safe_unpickle(path)
        for key in ("data", label_key):
            if key not in d:
                raise DatasetError(f"{path}: key {key!r} missing (keys: {', '.join(sorted(d))})")
        data = d["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
            raise DatasetError(
                f"{path}: 'data' must be a uint8 array (N, {PIXELS}), got "
                f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
            )
        lab = np.asarray(d[label_key])
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise DatasetError(f"{path}: {label_key!r} must be a list of integers")
        if len(lab) != len(data):
            raise DatasetError(
                f"{path}: image/label count mismatch: {len(data)} images, {len(lab)} labels ({label_key!r})"
            )
        images.append(_images_from_rows(data))
        labels.append(lab.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read_binary(folder: Path, files: list[str], label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    images, labels = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR binary version: {path} not found")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DatasetError(
                f"{path}: truncated or wrong format: {raw.size} bytes is not a whole number of "
                f"{record}-byte records ({label_bytes} label byte(s) + {PIXELS} pixels)"
            )
        rows = raw.reshape(-1, record)  # (N, label_bytes + 3072)
        labels.append(rows[:, label_index].astype(np.int64))
        images.append(_images_from_rows(rows[:, label_bytes:]))
    return np.concatenate(images), np.concatenate(labels)


def _text_names(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _version(folder: Path, py_files: dict[str, list[str]], bin_files: dict[str, list[str]]) -> str | None:
    if (folder / py_files["test"][0]).is_file():
        return "python"
    if (folder / bin_files["test"][0]).is_file():
        return "binary"
    return None


def is_cifar10_dir(folder: Path) -> bool:
    return _version(folder, CIFAR10_PY, CIFAR10_BIN) is not None


def is_cifar100_dir(folder: Path) -> bool:
    return _version(folder, CIFAR100_PY, CIFAR100_BIN) is not None


def load_cifar(folder: str | Path, split: str = "test", *, num_classes: int = 10, labels: str = "fine") -> ImageSplit:
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (100) ``split`` ("train" / "test") from ``folder``.

    ``folder`` holds either release (python version preferred when both are there). For CIFAR-100,
    ``labels`` chooses the 100 "fine" or the 20 "coarse" classes.

    Returns:
        ImageSplit (N, 32, 32, 3) uint8 RGB; N = 50,000 (train) or 10,000 (test) for the releases.
    """
    folder = Path(folder)
    if labels not in LABEL_TYPES:
        raise ValueError(f"labels: expected one of {', '.join(LABEL_TYPES)}, got {labels!r}")
    if num_classes == 10:
        version = _version(folder, CIFAR10_PY, CIFAR10_BIN)
        if version == "python":
            images, lab = _read_python(folder, CIFAR10_PY[split], "labels")
            meta_path = folder / "batches.meta"
            classes = (
                _names(safe_unpickle(meta_path).get("label_names"), meta_path, "label_names")
                if meta_path.is_file()
                else CIFAR10_CLASSES
            )
        elif version == "binary":
            images, lab = _read_binary(folder, CIFAR10_BIN[split], 1, 0)
            classes = _text_names(folder / "batches.meta.txt") or CIFAR10_CLASSES
        else:
            raise FileNotFoundError(f"no CIFAR-10 release in {folder} (test_batch or test_batch.bin)")
        name = f"cifar10/{split}"
    elif num_classes == 100:
        version = _version(folder, CIFAR100_PY, CIFAR100_BIN)
        if version == "python":
            images, lab = _read_python(folder, CIFAR100_PY[split], f"{labels}_labels")
            meta_path = folder / "meta"
            key = f"{labels}_label_names"
            classes = _names(safe_unpickle(meta_path).get(key), meta_path, key) if meta_path.is_file() else None
        elif version == "binary":
            images, lab = _read_binary(folder, CIFAR100_BIN[split], 2, 0 if labels == "coarse" else 1)
            classes = _text_names(folder / f"{labels}_label_names.txt")
        else:
            raise FileNotFoundError(f"no CIFAR-100 release in {folder} (test or test.bin)")
        if classes is None:
            if labels == "coarse":
                raise FileNotFoundError(f"{folder}: coarse label names file missing")
            classes = CIFAR100_CLASSES
        name = f"cifar100/{split}" + ("-coarse" if labels == "coarse" else "")
    else:
        raise ValueError(f"num_classes: expected 10 or 100, got {num_classes!r}")
    if len(lab) and lab.max() >= len(classes):
        raise DatasetError(f"{folder}: label {lab.max()} out of range for {len(classes)} classes")
    return ImageSplit(images, lab, classes, name, {"path": str(folder), "version": version})

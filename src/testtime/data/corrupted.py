"""Corrupted test sets in the published layouts, and Tiny-ImageNet-200.

* CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019, zenodo records 2535967 / 3555552):
  ``<corruption>.npy`` of shape (5 * n, 32, 32, 3) uint8 (n = 10,000 in the release), severities
  1..5 in consecutive blocks (severity s = rows (s-1)*n .. s*n), and ``labels.npy`` (5 * n,). The
  block size is inferred as len / 5, so small files in that layout work too. Arrays are opened
  with ``allow_pickle=False`` and memory-mapped; only the asked block is copied.
* Tiny-ImageNet-200 (cs231n): ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/*.JPEG``,
  ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file, wnid, box).
* Tiny-ImageNet-C: ``<corruption>/<severity>/<wnid>/*.JPEG`` (64x64, the 10,000 val images).

Classes of both Tiny-ImageNet sets are the wnids sorted, so labels agree between them.

Example::

    fog5 = load_cifar_c("/data/CIFAR-10-C", corruption="fog", severity=5, num_classes=10)
    fog5.images.shape    # (10000, 32, 32, 3)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from testtime.data.errors import DatasetError
from testtime.data.imagefolder import decode_images, load_image_folder, scan_class_folders
from testtime.data.names import CIFAR10_CLASSES, CIFAR100_CLASSES, CORRUPTIONS_ALL, SEVERITIES
from testtime.data.split import ImageSplit

CIFAR10C_FOLDERS = ("CIFAR-10-C",)
CIFAR100C_FOLDERS = ("CIFAR-100-C",)
TINY_FOLDERS = ("tiny-imagenet-200",)
TINYC_FOLDERS = ("Tiny-ImageNet-C",)


def check_corruption(corruption: Any, severity: Any) -> None:
    """ValueError unless ``corruption`` is a known name and ``severity`` an int in 1..5."""
    if corruption not in CORRUPTIONS_ALL:
        raise ValueError(f"corruption: expected one of {', '.join(CORRUPTIONS_ALL)}; got {corruption!r}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ValueError(f"severity: expected an integer in 1..5, got {severity!r}")


def _check_c_kw(split: str, corruption: Any = None, severity: Any = 5, **_: Any) -> None:
    if corruption is None:
        raise ValueError(f"corruption: required; one of {', '.join(CORRUPTIONS_ALL)}")
    check_corruption(corruption, severity)


def is_cifar_c_dir(folder: Path) -> bool:
    """A folder with a ``<corruption>.npy`` (its ``labels.npy`` is checked by the loader, with a clear error)."""
    return any((folder / f"{c}.npy").is_file() for c in CORRUPTIONS_ALL)


def check_npy_magic(path: Path) -> None:
    """A DatasetError naming what ``path`` is when it is not a .npy file (empty, another format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if not head:
        raise DatasetError(f"{path}: empty file (0 bytes); write it again (testtime corrupt) or remove it")
    if head != b"\x93NUMPY":
        raise DatasetError(f"{path}: not a .npy file (it starts with {head!r}, not b'\\x93NUMPY')")


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    check_npy_magic(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as exc:  # bad header, object arrays (would need pickle), truncated data
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None


def load_cifar_c(
    folder: str | Path, split: str = "test", *, corruption: str, severity: int = 5, num_classes: int = 10
) -> ImageSplit:
    """One (corruption, severity) block of CIFAR-10-C (``num_classes=10``) or CIFAR-100-C (100).

    Returns:
        ImageSplit (n, 32, 32, 3) uint8, n = len(file) / 5 (10,000 for the release), in test-set order.
    """
    check_corruption(corruption, severity)
    folder = Path(folder)
    path = folder / f"{corruption}.npy"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.npy") if p.stem in CORRUPTIONS_ALL)
        raise FileNotFoundError(f"{path} not found; corruptions present in {folder}: {', '.join(present) or 'none'}")
    data = _open_npy(path)
    if not (folder / "labels.npy").is_file():
        raise FileNotFoundError(f"{folder / 'labels.npy'} is missing beside {path.name} (the release ships both)")
    labels = _open_npy(folder / "labels.npy")
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        raise DatasetError(f"{path}: expected uint8 (N, H, W, 3), got {data.dtype} {data.shape}")
    if len(data) == 0 or len(data) % 5:
        raise DatasetError(f"{path}: {len(data)} rows is not 5 equal severity blocks")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{folder / 'labels.npy'}: expected integer labels (N,), got {labels.dtype} {labels.shape}")
    block = len(data) // 5
    if len(labels) not in (len(data), block):
        raise DatasetError(
            f"image/label count mismatch: {path.name} holds {len(data)} images, labels.npy {len(labels)} labels"
        )
    lo, hi = (severity - 1) * block, severity * block
    images = np.array(data[lo:hi])  # copy of one block out of the memory map
    lab = np.array(labels[lo:hi] if len(labels) == len(data) else labels, dtype=np.int64)
    classes = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
    if len(lab) and (lab.min() < 0 or lab.max() >= len(classes)):
        raise DatasetError(f"{folder / 'labels.npy'}: labels outside [0, {len(classes)})")
    prefix = "cifar10-c" if num_classes == 10 else "cifar100-c"
    return ImageSplit(
        images,
        lab,
        classes,
        f"{prefix}/{corruption}/{severity}",
        {"path": str(path), "corruption": corruption, "severity": int(severity), "rows": [lo, hi]},
    )


# --- Tiny-ImageNet ---------------------------------------------------------------------------


def is_tiny_imagenet_dir(folder: Path) -> bool:
    return (folder / "wnids.txt").is_file() and ((folder / "train").is_dir() or (folder / "val").is_dir())


def read_wnids(folder: Path) -> tuple[str, ...]:
    path = folder / "wnids.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    wnids = [w.strip() for w in path.read_text().splitlines() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path}: expected one unique wnid per line")
    return tuple(sorted(wnids))


def read_words(folder: Path, wnids: tuple[str, ...]) -> list[str]:
    """Human-readable names of ``wnids`` from ``words.txt`` (the wnid itself when absent)."""
    words: dict[str, str] = {}
    path = folder / "words.txt"
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.strip()
    return [words.get(w, w) for w in wnids]


def load_tiny_imagenet(
    folder: str | Path,
    split: str = "val",
    *,
    on_bad_file: str = "warn",
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
) -> ImageSplit:
    """Tiny-ImageNet-200 ``split``: "train" (100,000) or "val" (10,000), 64x64 RGB, 200 sorted wnids."""
    from testtime.data.cache import cache_key, read_cached, write_cached
    from testtime.data.paths import cache_dir as default_cache_dir

    folder = Path(folder)
    wnids = read_wnids(folder)
    label_of = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        class_dirs = [(w, folder / "train" / w / "images") for w in wnids]
        for _, d in class_dirs:
            if not d.is_dir():
                raise FileNotFoundError(f"Tiny-ImageNet train folder {d} not found")
        items, stats, skipped = scan_class_folders(class_dirs, on_bad_file=on_bad_file, extensions=(".jpeg", ".jpg"))
    elif split == "val":
        ann = folder / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise FileNotFoundError(f"{ann} not found")
        items, stats, skipped = [], [], []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in label_of:
                raise DatasetError(f"{ann}:{n}: expected '<file>\\t<wnid>\\t...' with a wnid of wnids.txt")
            fname = parts[0]
            if not fname or fname != Path(fname).name or fname in (".", ".."):  # no '../', no sub-paths
                raise DatasetError(f"{ann}:{n}: {fname!r} is not a plain file name in val/images/")
            path = folder / "val" / "images" / fname
            try:
                st = path.stat()
            except OSError:
                raise FileNotFoundError(f"{path} (listed in {ann}:{n}) not found") from None
            items.append((path, label_of[parts[1]]))
            stats.append((f"val/images/{parts[0]}", st.st_size, st.st_mtime_ns))
        if not items:
            raise DatasetError(f"{ann}: no annotations")
    else:
        raise ValueError(f"split: tiny-imagenet has splits train, val; got {split!r}")
    name = f"tiny-imagenet/{split}"
    key = cache_key("tiny-imagenet", {"split": split, "on_bad_file": on_bad_file, "wnids": list(wnids)}, stats)
    store = Path(cache_dir).expanduser() / "splits" if cache_dir is not None else default_cache_dir() / "splits"
    if cache:
        hit = read_cached(store, key)
        if hit is not None:
            return hit
    images, labels, bad = decode_images(items, on_bad_file=on_bad_file)
    meta = {"path": str(folder), "skipped": skipped + bad, "words": read_words(folder, wnids)}
    out = ImageSplit(images, labels, wnids, name, meta)
    if cache:
        try:
            write_cached(store, key, out)
        except OSError:
            pass
    return out


def is_tiny_imagenet_c_dir(folder: Path) -> bool:
    return any((folder / c).is_dir() for c in CORRUPTIONS_ALL)


def load_tiny_imagenet_c(
    folder: str | Path,
    split: str = "test",
    *,
    corruption: str,
    severity: int = 5,
    on_bad_file: str = "warn",
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
) -> ImageSplit:
    """Tiny-ImageNet-C ``<corruption>/<severity>/<wnid>/*.JPEG`` as an ImageSplit (classes: sorted wnids)."""
    check_corruption(corruption, severity)
    folder = Path(folder)
    sub = folder / corruption / str(int(severity))
    if not sub.is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name in CORRUPTIONS_ALL)
        raise FileNotFoundError(f"{sub} not found; corruptions present in {folder}: {', '.join(present) or 'none'}")
    out = load_image_folder(
        sub,
        None,
        on_bad_file=on_bad_file,
        cache_dir=cache_dir,
        cache=cache,
        name=f"tiny-imagenet-c/{corruption}/{severity}",
    )
    out.meta.update(corruption=corruption, severity=int(severity))
    return out

"""Image-folder trees ``<root>/<class>/*.{png,jpg,jpeg}`` with a content-addressed cache.

Classes are the sub-folder names, sorted; files are sorted by name inside each class. Every image
is decoded with Pillow to RGB uint8 and all must have the same size. Hidden entries (names
starting with ".") are ignored. Other files (non-image extensions, or image files Pillow cannot
decode) are skipped with a warning (``on_bad_file="warn"``) or stop the load
(``on_bad_file="error"``). The decoded split is cached (see :mod:`testtime.data.cache`): the second
load of an unchanged tree reads two .npy files instead of decoding every image.

Example::

    split = load_image_folder("/data/cifar10-jpeg/test")
    split.images.shape     # (10000, 32, 32, 3)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from testtime.data.cache import cache_key, read_cached, write_cached
from testtime.data.errors import DatasetError
from testtime.data.paths import cache_dir as default_cache_dir
from testtime.data.split import ImageSplit

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ON_BAD_FILE = ("warn", "error")


def check_on_bad_file(on_bad_file: str) -> None:
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file: expected one of {', '.join(ON_BAD_FILE)}, got {on_bad_file!r}")


def scan_class_folders(
    class_dirs: list[tuple[str, Path]], *, on_bad_file: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> tuple[list[tuple[str, int]], list[tuple[str, int, int]], list[str]]:
    """List the images of each ``(class name, folder)``.

    Returns ``(items, stats, skipped)``: items = (path, label) in load order; stats =
    (relative path, size, mtime_ns) of every entry, the cache key's input; skipped = non-image files.
    Raises DatasetError for an empty class folder, or for a non-image file when ``on_bad_file="error"``.
    """
    items: list[tuple[str, int]] = []
    stats: list[tuple[str, int, int]] = []
    skipped: list[str] = []
    for label, (cls, folder) in enumerate(class_dirs):
        try:
            entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            raise DatasetError(f"cannot list class folder {folder}: {exc.strerror}") from None
        n_before = len(items)
        for e in entries:
            if e.is_dir():
                continue
            st = e.stat()
            stats.append((f"{cls}/{e.name}", st.st_size, st.st_mtime_ns))
            if e.name.lower().endswith(extensions):
                items.append((e.path, label))  # str: building 10^5 Path objects costs more than the cached load
            elif on_bad_file == "error":
                raise DatasetError(
                    f"non-image file {e.path} (images must end in {', '.join(extensions)}); "
                    "remove it or use on_bad_file='warn' to skip it"
                )
            else:
                skipped.append(e.path)
        if len(items) == n_before:
            raise DatasetError(f"empty class folder {folder}: no {'/'.join(extensions)} images in it")
    return items, stats, skipped


PROGRESS_MIN = 2000  # images: fewer decode in a few seconds, without a progress bar


def decode_images(
    items: list[tuple[str | Path, int]], *, on_bad_file: str, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``items`` = (path, label) to RGB uint8 (N, H, W, 3) and int64 labels (N,).

    All images must share one size (the first image's, or ``size`` = (H, W)): a different size is a
    DatasetError naming the file. Undecodable files are skipped (warn) or raise (error).
    """
    images: np.ndarray | None = None
    labels = np.empty(len(items), dtype=np.int64)
    bad: list[str] = []
    n = 0
    # a progress bar (stderr) for a first decode long enough to look hung; the cache makes later loads fast
    bar = tqdm(items, desc="decoding images (cached afterwards)", unit="img", disable=len(items) < PROGRESS_MIN,
               dynamic_ncols=True, mininterval=2.0)
    for path, label in bar:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            if on_bad_file == "error":
                raise DatasetError(f"cannot decode image {path}: {exc}") from None
            bad.append(str(path))
            continue
        if images is None:
            h, w = size if size is not None else arr.shape[:2]
            images = np.empty((len(items), h, w, 3), dtype=np.uint8)
        if arr.shape[:2] != images.shape[1:3]:
            raise DatasetError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but the images before it are "
                f"{images.shape[2]}x{images.shape[1]}; all images of a split must share one size"
            )
        images[n] = arr
        labels[n] = label
        n += 1
    if images is None:
        raise DatasetError("no decodable image found")
    return images[:n], labels[:n], bad


def resolve_split_dir(root: Path, split: str | None) -> Path:
    """``root/split`` when it is a folder; else ``root`` itself when it is a class tree.

    Raises FileNotFoundError when ``root`` is missing, and DatasetError when ``root`` holds split
    folders (train/val/test) but not the one asked for.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist or is not a folder")
    if split and (root / split).is_dir():
        return root / split
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_like = [d for d in subdirs if d.lower() in ("train", "test", "val", "valid", "validation")]
    if split_like and split:
        raise DatasetError(f"split {split!r} not found under {root}; found: {', '.join(split_like)}")
    return root


def load_image_folder(
    root: str | os.PathLike,
    split: str | None = "test",
    *,
    on_bad_file: str = "warn",
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    name: str | None = None,
    classes: tuple[str, ...] | None = None,
) -> ImageSplit:
    """Load ``<root>[/<split>]/<class>/*.{png,jpg,jpeg}`` as an RGB :class:`ImageSplit`.

    Args:
        root: the tree, or a folder holding one tree per split (``root/train``, ``root/test``).
        split: the sub-folder to read when it exists (else ``root`` is the class tree).
        on_bad_file: "warn" (skip non-image / undecodable files with a warning) or "error".
        cache_dir: cache folder (default ``$TESTTIME_CACHE`` or ``~/.cache/testtime``); the
            entries go to ``<cache_dir>/splits``.
        cache: False to neither read nor write the cache.
        name: the split's name (default ``imagefolder/<folder name>``).
        classes: expected class folder names in label order (default: the sorted sub-folders);
            a missing one is an error.

    Returns:
        ImageSplit with images (N, H, W, 3) uint8, labels (N,) int64, classes sorted.
    """
    check_on_bad_file(on_bad_file)
    folder = resolve_split_dir(Path(root).expanduser(), split)
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = tuple(found)
        if not classes:
            raise DatasetError(f"no class folders in {folder} (expected {folder}/<class>/*.jpg|png)")
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DatasetError(f"{folder}: missing class folder(s) {', '.join(missing[:5])}")
    items, stats, skipped = scan_class_folders([(c, folder / c) for c in classes], on_bad_file=on_bad_file)
    name = name or f"imagefolder/{folder.name}"
    options = {"on_bad_file": on_bad_file, "classes": list(classes), "name": name}
    key = cache_key("imagefolder", options, stats)
    store = Path(cache_dir).expanduser() / "splits" if cache_dir is not None else default_cache_dir() / "splits"
    if cache:
        hit = read_cached(store, key)
        if hit is not None:
            _warn_skipped(hit.meta.get("skipped", []))
            return hit
    images, labels, bad = decode_images(items, on_bad_file=on_bad_file)
    skipped = skipped + bad
    _warn_skipped(skipped)
    split_obj = ImageSplit(
        images, labels, tuple(classes), name, {"path": str(folder), "skipped": skipped, "cache_key": key}
    )
    if cache:
        try:
            write_cached(store, key, split_obj)
        except OSError as exc:
            warnings.warn(f"could not write the cache in {store}: {exc}", stacklevel=2)
    return split_obj


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        warnings.warn(
            f"skipped {len(skipped)} non-image or undecodable file(s): {', '.join(skipped[:3])}{more}",
            UserWarning,
            stacklevel=3,
        )

"""A content-addressed on-disk cache for decoded splits.

The key is a SHA-256 over the loader's name and format version, its options, and the list of
source files with their sizes and modification times: touching, adding or removing a file gives a
new key, so a stale entry is never read. An entry is three files in ``<cache>/splits/``:
``<key>.images.npy`` and ``<key>.labels.npy`` (read with ``allow_pickle=False``) and ``<key>.json``
(class names, name, meta). Each is written to a temporary name in the same folder and renamed;
the json is written last and marks the entry complete.

Example::

    key = cache_key("imagefolder", {"on_bad_file": "warn"}, files)
    split = read_cached(cache_dir() / "splits", key)
    if split is None:
        split = decode(...)
        write_cached(cache_dir() / "splits", key, split)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from testtime.data.split import ImageSplit

FORMAT_VERSION = 1


def cache_key(loader: str, options: dict[str, Any], files: Iterable[tuple[str, int, int]]) -> str:
    """SHA-256 hex key of ``loader``, ``options`` (JSON-able) and ``files`` = (relpath, size, mtime_ns)."""
    h = hashlib.sha256()
    h.update(json.dumps({"loader": loader, "v": FORMAT_VERSION, "options": options}, sort_keys=True).encode())
    for rel, size, mtime in files:
        h.update(f"\n{rel}\t{size}\t{mtime}".encode())
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_cached(folder: Path, key: str, split: ImageSplit) -> None:
    """Store ``split`` under ``key`` (atomic per file; the json goes last). Errors are not fatal."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / f"{key}.images.npy", lambda f: np.save(f, split.images, allow_pickle=False))
    _atomic_write(folder / f"{key}.labels.npy", lambda f: np.save(f, split.labels, allow_pickle=False))
    info = {
        "classes": list(split.classes),
        "name": split.name,
        "meta": split.meta,
        "n": len(split),
        "shape": list(split.images.shape),
        "version": FORMAT_VERSION,
    }
    _atomic_write(folder / f"{key}.json", lambda f: f.write(json.dumps(info, sort_keys=True).encode()))


def read_cached(folder: Path, key: str) -> ImageSplit | None:
    """The split stored under ``key``, or None when absent or inconsistent (then it is rebuilt)."""
    js = folder / f"{key}.json"
    if not js.is_file():
        return None
    try:
        info = json.loads(js.read_text())
        images = np.load(folder / f"{key}.images.npy", allow_pickle=False)
        labels = np.load(folder / f"{key}.labels.npy", allow_pickle=False)
        if list(images.shape) != info["shape"] or len(labels) != info["n"]:
            return None
        meta = dict(info["meta"])
        meta["cache"] = str(js)
        return ImageSplit(images, labels, tuple(info["classes"]), info["name"], meta)
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # zero-byte or truncated files: rebuilt
        return None

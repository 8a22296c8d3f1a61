"""Download official releases with a checksum check: ``testtime data download NAME``.

Each archive is streamed to a temporary name in the destination folder, its MD5 compared with the
published value, then renamed; archives are unpacked into a temporary folder and moved into place,
so an interrupted or failed download leaves nothing half-written. Without network the error says
what to do instead (download the file elsewhere, then pass ``--root`` or set ``$TESTTIME_DATA``).

Checksums are the MD5s published with the releases (and used by torchvision and the zenodo
records). Tiny-ImageNet-C has no published checksum that could be confirmed: it is downloaded
unverified, and the command says so.

Example::

    download_dataset("cifar10", "/data")     # -> /data/cifar-10-batches-py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testtime.data.paths import DATA_ENV, download_home


class DownloadError(RuntimeError):
    """A download failed (no network, HTTP error, checksum mismatch, bad archive); one-line message."""


@dataclass(frozen=True)
class Resource:
    """One file of a release: where it is, its published MD5 (None: unknown), whether to unpack it."""

    url: str
    filename: str
    md5: str | None
    unpack: bool = True
    subdir: str = ""  # folder under the destination for files that are not unpacked


_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

RELEASES: dict[str, tuple[Resource, ...]] = {
    "fashion-mnist": tuple(
        Resource(_FMNIST + f, f, md5, unpack=False, subdir="fashion-mnist")
        for f, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
    "cifar10": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "cifar100": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    "cifar10-c": (
        Resource(
            "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
            "CIFAR-10-C.tar",
            "56bf5dcef84df0e2308c6dcbcbbd8499",
        ),
    ),
    "cifar100-c": (
        Resource(
            "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
            "CIFAR-100-C.tar",
            "11f0ed0f1191edbf9fa23466ae6021d3",
        ),
    ),
    "tiny-imagenet": (
        Resource(
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
            "tiny-imagenet-200.zip",
            "90528d7ca1a48142e341f4ef8d21d0de",
        ),
    ),
    "tiny-imagenet-c": (
        Resource("https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar", "Tiny-ImageNet-C.tar", None),
    ),
}


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _instead(res: Resource) -> str:
    md5 = f"md5 {res.md5}" if res.md5 else "no published checksum"
    return (
        f"download {res.url} ({md5}) on a machine with network, unpack it into a folder, "
        f"then pass --root FOLDER (root= in Python) or set ${DATA_ENV}=FOLDER"
    )


def fetch(res: Resource, folder: Path, *, timeout: float, log: Callable[[str], None]) -> Path:
    """Download ``res`` into ``folder`` (temp name, checksum, rename); returns the file's path."""
    target = folder / res.filename
    if target.is_file() and res.md5 and md5_of(target) == res.md5:
        log(f"{target}: already there, checksum ok")
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=f".{res.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    h = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(res.url, timeout=timeout) as resp:  # noqa: S310 (fixed URLs)
                    total = int(resp.headers.get("Content-Length") or 0)
                    log(f"downloading {res.url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
                    while block := resp.read(1 << 20):
                        out.write(block)
                        h.update(block)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    reason = f"HTTP {exc.code} {exc.reason}"
                else:
                    reason = getattr(exc, "reason", None) or exc
                raise DownloadError(f"cannot download {res.url} ({reason}); instead: {_instead(res)}") from None
        got = h.hexdigest()
        if res.md5 and got != res.md5:
            raise DownloadError(
                f"checksum mismatch for {res.url}: md5 {got}, expected {res.md5}; the file was discarded. "
                f"Retry, or {_instead(res)}"
            )
        if not res.md5:
            log(f"{res.filename}: no published checksum known; md5 of the download is {got} (not verified)")
        os.replace(tmp, target)
        return target
    finally:
        if tmp.exists():
            tmp.unlink()


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        p = Path(m.name)
        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
            raise DownloadError(f"{archive}: refusing unsafe archive member {m.name!r}")
        members.append(m)
    return members


def unpack(archive: Path, folder: Path) -> list[Path]:
    """Unpack a .tar / .tar.gz / .zip into ``folder`` via a temporary folder; returns the top-level entries."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder))
    try:
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as z:
                    for name in z.namelist():
                        p = Path(name)
                        if p.is_absolute() or ".." in p.parts:
                            raise DownloadError(f"{archive}: refusing unsafe archive member {name!r}")
                    z.extractall(tmp)
            else:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, members=_safe_members(tar, archive), filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise DownloadError(f"{archive}: cannot unpack ({exc})") from None
        moved = []
        for entry in sorted(tmp.iterdir()):
            dest = folder / entry.name
            if dest.exists():
                raise DownloadError(f"{dest} already exists; remove it or choose another --root")
            os.replace(entry, dest)
            moved.append(dest)
        return moved
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    timeout: float = 15.0,
    keep_archive: bool = False,
    resources: tuple[Resource, ...] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Download, verify and unpack the official release of ``name`` into ``root``.

    Args:
        name: one of :data:`RELEASES` (KeyError listing them otherwise).
        root: destination (default ``$TESTTIME_DATA``, else ``<cache>/datasets``).
        timeout: seconds to wait for the server before giving up.
        keep_archive: keep the downloaded archive after unpacking.
        resources: override the release's files (tests point this at a local server).

    Returns:
        The folder where :func:`testtime.data.find_dataset` now finds the dataset.
    """
    from testtime.data.datasets import find_dataset

    if name not in RELEASES:
        raise KeyError(f"unknown downloadable dataset {name!r}; valid: {', '.join(sorted(RELEASES))}")
    if not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    folder = Path(root).expanduser() if root is not None else download_home()
    found, _ = find_dataset(name, folder)
    if found is not None:
        log(f"{name}: already present at {found}")
        return found
    folder.mkdir(parents=True, exist_ok=True)
    for res in resources or RELEASES[name]:
        sub = folder / res.subdir
        sub.mkdir(parents=True, exist_ok=True)
        path = fetch(res, sub, timeout=timeout, log=log)
        if res.unpack:
            for entry in unpack(path, sub):
                log(f"unpacked {entry}")
            if not keep_archive:
                path.unlink()
    found, _ = find_dataset(name, folder)
    if found is None:
        raise DownloadError(f"{name}: downloaded into {folder}, but the expected layout is not there")
    return found

"""Write corrupted test sets to disk in the published CIFAR-10-C layout, resumably and atomically.

Layout (Hendrycks & Dietterich, ICLR 2019; CIFAR-10-C / CIFAR-100-C releases)::

    OUT/<corruption>.npy   uint8 (S * N, H, W, C): the S severities stacked in blocks of N, test-set order
    OUT/labels.npy         (S * N,) the labels repeated per block (uint8 when < 256 classes, as released)
    OUT/corruptions.json   the settings (source, seed, parameter set, severities, chunk size, checksums)

``layout="folders"`` writes Tiny-ImageNet-C's layout instead: ``OUT/<corruption>/<severity>/<class>/
<index>.JPEG`` (JPEG quality 85, as that release), plus ``corruptions.json``.

With all five severities the npy files are exactly the release's layout (readable by
``testtime.data.load_dataset("cifar10-c", root=OUT, corruption=..., severity=...)``); with a subset
of severities the blocks are the chosen ones in increasing order, as ``corruptions.json`` says.

Every file is written under a temporary name in ``OUT`` and renamed into place, so an
interrupted run leaves no half-written file; a rerun with the same settings skips what is done
(finished corruptions, and finished severity blocks kept in ``OUT/.partial/``).

Example::

    >>> materialize(split, "/data/CIFAR-10-C-mine", corruptions=["fog"], severities=[5], seed=0)
    [PosixPath('/data/CIFAR-10-C-mine/fog.npy')]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from testtime.corruptions.core import check_feasible, check_name, check_severity
from testtime.corruptions.dataset import DEFAULT_CHUNK, CorruptedSplit
from testtime.corruptions.params import PARAM_SETS, resolve_params
from testtime.data.split import ImageSplit

MANIFEST = "corruptions.json"
LAYOUTS = ("npy", "folders")
FORMAT = "testtime-corruptions/1"


def _atomic(path: Path, write) -> None:
    """Write ``path`` through ``write(tmp_path)`` then ``os.replace`` (same folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    _atomic(path, write)


def _npy_ok(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return arr.shape == shape and arr.dtype == dtype


def plan(
    split: ImageSplit,
    out: str | os.PathLike,
    *,
    corruptions: Sequence[str],
    severities: Sequence[int],
    seed: int,
    params: str | None,
    chunk_size: int,
    layout: str = "npy",
) -> dict:
    """Validate everything and return the settings record; raises before anything is written."""
    if not isinstance(split, ImageSplit):
        raise ValueError(f"split: expected an ImageSplit, got {type(split).__name__}")
    names = [check_name(c) for c in corruptions]
    if not names:
        raise ValueError("corruptions: at least one corruption is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"corruptions: listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    sevs = sorted({check_severity(s) for s in severities})
    if not sevs:
        raise ValueError("severities: at least one severity is needed")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    if params is not None and params not in PARAM_SETS:
        raise ValueError(f"params: unknown parameter set {params!r}; valid: {', '.join(PARAM_SETS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if layout == "folders":
        bad = [c for c in split.classes if not c or "/" in c or "\\" in c or c.startswith(".")]
        if bad:
            raise ValueError(f"layout: 'folders' needs class names usable as folder names; got {bad[0]!r}")
    h, w = split.image_size
    pset = resolve_params(params, h, w)
    for name in names:
        check_feasible(name, pset, h, w)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    digest = hashlib.sha256(np.ascontiguousarray(split.images).data).hexdigest()
    record = {
        "format": FORMAT,
        "source": split.name,
        "num_images": len(split),
        "image_shape": list(split.images.shape[1:]),
        "classes": list(split.classes),
        "clean_sha256": digest,
        "labels_sha256": hashlib.sha256(np.ascontiguousarray(split.labels).data).hexdigest(),
        "seed": int(seed),
        "params": pset,
        "severities": sevs,
        "chunk_size": chunk_size,
        "layout": layout,
    }
    old = out / MANIFEST
    if old.is_file():
        try:
            prev = json.loads(old.read_text())
        except (ValueError, OSError):
            raise ValueError(f"out: {old} is unreadable; use another --out folder") from None
        diff = [k for k in record if prev.get(k) != record[k]]
        if diff:
            raise ValueError(
                f"out: {out} holds a run with different settings ({', '.join(diff)}); use another folder or remove it"
            )
        record["corruptions"] = [c for c in prev.get("corruptions", []) if c not in names] + names
    else:
        record["corruptions"] = names
    return record


_WORKER: dict = {}


def _exit_when_orphaned(parent: int, every_s: float = 0.5) -> None:
    """A worker's watchdog: leave at once when the parent is gone (kill -9, SIGTERM, crash)."""
    while True:
        time.sleep(every_s)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], name: str, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it (no worker tracebacks)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="parent-watch").start()
    torch.set_num_threads(1)  # one process per core: intra-op threads only add contention
    _WORKER["split"] = ImageSplit(images, labels, classes, name)


def _run_pool(workers: int, split: ImageSplit, jobs: list[tuple], on_done) -> None:
    """Run ``_write_block_in_worker(job)`` for every job in ``workers`` spawn processes, calling
    ``on_done(result)`` as each finishes. On any error or interrupt the workers are killed (a block
    being written is lost; its temporary file is removed by the next run) and the error re-raised."""
    ctx = multiprocessing.get_context("spawn")
    init = (split.images, split.labels, split.classes, split.name, os.getpid())
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init)
    try:
        # The workers start during the submissions, with SIGINT blocked (the signal mask is inherited),
        # so Ctrl-C while they import prints no worker traceback; here it stays pending and is raised as
        # KeyboardInterrupt once the mask is restored.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
        try:
            futures = [ex.submit(_write_block_in_worker, job) for job in jobs]
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for fut in as_completed(futures):
            on_done(fut.result())
    except BaseException:
        procs = list(getattr(ex, "_processes", {}).values())  # the pool keeps them here (CPython 3.9+)
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
        raise
    ex.shutdown(wait=True)


def _write_block(
    split: ImageSplit, name: str, severity: int, seed: int, params: str, chunk_size: int, device: str,
    grey_as_rgb: bool, layout: str, part: str, on_chunk=None,
) -> tuple[str, int, int]:  # fmt: skip
    """Corrupt the whole split at one severity and write it atomically to ``part``: an ``.npy``
    block (layout ``npy``) or a ``<class>/<index>.JPEG`` folder renamed into place (``folders``)."""
    cs = CorruptedSplit(
        split, name, severity, seed, params=params, chunk_size=chunk_size, device=device, grey_as_rgb=grey_as_rgb
    )
    block = None
    for k in range(cs.num_chunks):
        arr = cs.chunk(k)
        if block is None:
            block = np.empty((len(split), *arr.shape[1:]), dtype=np.uint8)
        block[k * chunk_size : k * chunk_size + len(arr)] = arr
        if on_chunk is not None:
            on_chunk(len(arr))
    if layout == "npy":
        _save_npy(Path(part), block)
    else:
        _save_folder(Path(part), block, split.labels, split.classes)
    return name, severity, len(split)


def _save_folder(path: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    """Tiny-ImageNet-C layout: ``path/<class>/<index:05d>.JPEG`` (Pillow, quality 85, optimize, as the
    generator saves them), written in a hidden sibling folder and renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for lab in np.unique(labels):  # only classes that have images (loaders reject empty folders)
            (tmp / classes[int(lab)]).mkdir(parents=True)
        for i, (img, lab) in enumerate(zip(images, labels)):
            pic = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
            pic.save(tmp / classes[int(lab)] / f"{i:05d}.JPEG", "JPEG", quality=85, optimize=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_block_in_worker(args: tuple) -> tuple[str, int, int]:
    return _write_block(_WORKER["split"], *args)


@contextlib.contextmanager
def _locked(out: Path):
    """Hold ``out/.lock`` (``flock``, released by the OS when the holder dies, so never stale) for a run."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ValueError(
                f"out: {out} is in use by pid {pid} (another run writing there); wait for it or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def materialize(
    split: ImageSplit,
    out: str | os.PathLike,
    *,
    corruptions: Sequence[str],
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    params: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
    grey_as_rgb: bool = False,
    workers: int = 0,
    layout: str = "npy",
    progress: bool = True,
) -> list[Path]:
    """Corrupt ``split`` by each of ``corruptions`` at ``severities`` and write the published layout.

    Args:
        workers: 0 runs in this process (its torch thread settings); k >= 1 runs the
            (corruption, severity) blocks in k worker processes with one torch thread each, which
            is much faster than intra-op threads on a shared CPU.
        layout: ``"npy"`` (CIFAR-10-C: ``<corruption>.npy`` + ``labels.npy``) or ``"folders"``
            (Tiny-ImageNet-C: ``<corruption>/<severity>/<class>/<index>.JPEG``, JPEG quality 85
            as published, so the stored images are those bytes after one more JPEG round trip).

    Returns the ``<corruption>.npy`` paths (``<corruption>`` folders with ``folders``), done now or
    before. Bytes are those of
    ``CorruptedSplit(split, name, severity, seed, chunk_size=chunk_size)``, whatever ``workers``.
    """
    record = plan(
        split, out, corruptions=corruptions, severities=severities, seed=seed, params=params, chunk_size=chunk_size,
        layout=layout,
    )  # fmt: skip
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers: expected an int >= 0, got {workers!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):  # one run per folder: a second one fails at once, naming the first one's pid
        return _materialize_locked(split, out, record, corruptions, chunk_size, device, grey_as_rgb, workers,
                                   layout, progress)


def _materialize_locked(
    split: ImageSplit, out: Path, record: dict, corruptions: Sequence[str], chunk_size: int,
    device: str | torch.device, grey_as_rgb: bool, workers: int, layout: str, progress: bool,
) -> list[Path]:  # fmt: skip
    seed = record["seed"]
    partial = out / ".partial"
    names = [check_name(c) for c in corruptions]
    sevs = record["severities"]
    n = len(split)
    c = 3 if grey_as_rgb else split.channels
    shape = (len(sevs) * n, *split.image_size, c)

    def write_manifest(tmp: Path) -> None:
        tmp.write_text(json.dumps(record, indent=1) + "\n")

    _atomic(out / MANIFEST, write_manifest)
    for folder in (out, partial):  # temporaries left by a killed run (never a finished file)
        for stale in folder.glob(".*.tmp-*") if folder.is_dir() else ():
            stale.unlink(missing_ok=True)
    if layout == "folders":
        return _materialize_folders(split, out, names, sevs, record, chunk_size, device, grey_as_rgb, workers, progress)
    label_dtype = np.uint8 if split.num_classes <= 256 else np.int64
    labels = np.tile(split.labels, len(sevs)).astype(label_dtype)
    lpath = out / "labels.npy"
    if not (_npy_ok(lpath, labels.shape, np.dtype(label_dtype)) and np.array_equal(np.load(lpath), labels)):
        _save_npy(lpath, labels)

    def part_of(name: str, s: int) -> Path:
        return partial / f"{name}-{s}.npy"

    todo = [name for name in names if not _npy_ok(out / f"{name}.npy", shape, np.dtype(np.uint8))]
    jobs = [(name, s) for name in todo for s in sevs if not _npy_ok(part_of(name, s), (n, *shape[1:]), np.uint8)]
    pending = {name: {s for (m, s) in jobs if m == name} for name in todo}
    if todo:
        partial.mkdir(exist_ok=True)

    def finish(name: str) -> None:
        def assemble(tmp: Path) -> None:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for i, s in enumerate(sevs):
                mm[i * n : (i + 1) * n] = np.load(part_of(name, s), allow_pickle=False)
            mm.flush()
            del mm

        _atomic(out / f"{name}.npy", assemble)
        for s in sevs:
            part_of(name, s).unlink(missing_ok=True)

    for name in todo:
        if not pending[name]:  # all blocks were written by an interrupted run
            finish(name)
    bar = tqdm(total=len(jobs) * n, unit="img", desc="corrupt", disable=not progress, dynamic_ncols=True)
    common = (seed, record["params"], chunk_size, str(device), grey_as_rgb, "npy")
    try:
        if workers == 0:
            for name, s in jobs:
                bar.set_postfix_str(f"{name} {s}")
                _write_block(split, name, s, *common, str(part_of(name, s)), on_chunk=bar.update)
                pending[name].discard(s)
                if not pending[name]:
                    finish(name)
        elif jobs:

            def done(result: tuple[str, int, int]) -> None:
                name, s, count = result
                bar.update(count)
                bar.set_postfix_str(f"{name} {s}")
                pending[name].discard(s)
                if not pending[name]:
                    finish(name)

            _run_pool(workers, split, [(m, s, *common, str(part_of(m, s))) for m, s in jobs], done)
    finally:
        bar.close()
    if partial.is_dir():  # every block of this run is assembled: what is left is stale (another run's)
        shutil.rmtree(partial, ignore_errors=True)
    return [out / f"{name}.npy" for name in names]


def _materialize_folders(
    split: ImageSplit, out: Path, names: list[str], sevs: list[int], record: dict, chunk_size: int,
    device: str | torch.device, grey_as_rgb: bool, workers: int, progress: bool,
) -> list[Path]:  # fmt: skip
    """The ``folders`` layout: one job per missing ``<corruption>/<severity>`` folder."""
    for name in names:
        for stale in (out / name).glob(".*.tmp-*") if (out / name).is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
    jobs = [(name, s) for name in names for s in sevs if not (out / name / str(s)).is_dir()]
    for name, _ in jobs:
        (out / name).mkdir(exist_ok=True)
    common = (record["seed"], record["params"], chunk_size, str(device), grey_as_rgb, "folders")
    bar = tqdm(total=len(jobs) * len(split), unit="img", desc="corrupt", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 0:
            for name, s in jobs:
                bar.set_postfix_str(f"{name} {s}")
                _write_block(split, name, s, *common, str(out / name / str(s)), on_chunk=bar.update)
        elif jobs:

            def done(result: tuple[str, int, int]) -> None:
                bar.update(result[2])
                bar.set_postfix_str(f"{result[0]} {result[1]}")

            _run_pool(workers, split, [(m, s, *common, str(out / m / str(s))) for m, s in jobs], done)
    finally:
        bar.close()
    return [out / name for name in names]

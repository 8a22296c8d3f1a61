"""Where datasets are searched and where the cache lives.

Environment:
    ``$TESTTIME_DATA``: a folder holding datasets (``$TESTTIME_DATA/<name>`` or the official
    folder names, e.g. ``$TESTTIME_DATA/cifar-10-batches-py``).
    ``$TESTTIME_CACHE``: the cache folder (default ``~/.cache/testtime``).

Example::

    from testtime.data.paths import cache_dir
    cache_dir()          # PosixPath('/home/me/.cache/testtime')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

DATA_ENV = "TESTTIME_DATA"
CACHE_ENV = "TESTTIME_CACHE"


def cache_dir() -> Path:
    """The cache folder: ``$TESTTIME_CACHE`` if set, else ``~/.cache/testtime`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "testtime"


def data_home() -> Path | None:
    """``$TESTTIME_DATA`` as a path, or None when unset."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def download_home() -> Path:
    """Where ``testtime data download`` writes by default: ``$TESTTIME_DATA``, else ``<cache>/datasets``."""
    return data_home() or cache_dir() / "datasets"


def candidate_dirs(
    root: str | os.PathLike | None,
    name: str,
    folder_names: Iterable[str],
    fixed: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """The ordered folders searched for dataset ``name``.

    An explicit ``root`` is searched alone (itself, then ``root/<official folder>``): when the user
    names a path, nothing else is silently used. Without it, for base in (``$TESTTIME_DATA``, the
    download folder): ``base/<name>``, ``base/<name>/<official folder>``, ``base/<official folder>``,
    ``base``; then ``fixed``.
    """
    out: list[Path] = []
    if root is not None:
        r = Path(root).expanduser()
        out += [r] + [r / f for f in folder_names]
    else:
        bases = [b for b in (data_home(), download_home()) if b is not None]
        for base in bases:
            out += [base / name] + [base / name / f for f in folder_names]
            out += [base / f for f in folder_names] + [base]
        out += [Path(p) for p in fixed]
    seen: set[Path] = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def first_match(candidates: list[Path], is_dataset: Callable[[Path], bool]) -> Path | None:
    """The first candidate folder for which ``is_dataset`` holds, else None."""
    for c in candidates:
        try:
            if c.is_dir() and is_dataset(c):
                return c
        except OSError:
            continue
    return None

"""Checkpoints of a continual stream between its cells, so a stopped grid resumes the stream where it stopped.

Under the ``continual`` protocol a cell is one corruption's part of a stream over all corruptions
that is never reset, so its result depends on every corruption before it. Without a checkpoint a
grid stopped after the 8th of 15 corruptions replays the first 8 on resume (on the ``cifar10-cpu``
preset's CoTTA, 8 x about 2 min for each stopped stream). With one, written after every corruption
of the stream, the resumed stream loads the method's live state (:meth:`Method.state_tensors`:
weights, declared state, teachers, optimiser moments, random generator) and goes on from the next
corruption, bit for bit as the uninterrupted run (tests/bench/test_bench_grid.py).

Files: ``<run_dir>/streams/<label>-sev<severity>-seed<seed>-<stream key>.safetensors/.json`` (the
checkpoint format of :mod:`testtime.train.checkpoint`: safetensors, a sha256-checked JSON sidecar,
written atomically), removed when the stream's last corruption is measured. The stream key is the
store key of the stream's cells with the corruption left out, so a checkpoint of another method
setting, source model, order or batch size is never loaded; nor is one whose corruption order
differs, nor one written from other source weights than the run dir holds now (the weights
fingerprint of :func:`testtime.train.checkpoint.weights_fingerprint`, kept in the sidecar: models
retrained in the same run dir, e.g. on another CPU, start their streams again). A checkpoint that
is past the cell asked for (its corruption was deleted from the store) is not used: the stream is
replayed from its start.

Example::

    path = stream_path(run_dir, cell)
    done = load_stream(path, method, cell, names, weights)  # corruptions already run, or 0
    ...
    save_stream(path, method, cell, names[:k], weights)  # weights: the source model's fingerprint
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testtime.methods.base import Method
from testtime.store.db import cell_key
from testtime.train.checkpoint import checkpoint_exists, load_checkpoint, read_meta, save_checkpoint

FOLDER = "streams"


def stream_key(cell: Mapping[str, Any]) -> str:
    """The store key of ``cell``'s stream: its cell key with the corruption left out (sha256 hex)."""
    return cell_key({**{k: v for k, v in cell.items() if k != "key"}, "corruption": "(continual stream)"})


def stream_path(run_dir: str | Path, cell: Mapping[str, Any]) -> Path:
    """Where the checkpoint of ``cell``'s stream lives (without suffix)."""
    label = re.sub(r"[^A-Za-z0-9_.+-]", "_", str(cell["label"]))
    return Path(run_dir) / FOLDER / f"{label}-sev{cell['severity']}-seed{cell['seed']}-{stream_key(cell)[:16]}"


def save_stream(path: Path, method: Method, cell: Mapping[str, Any], done: Sequence[str], weights: str) -> None:
    """Write ``method``'s live state after the stream's corruptions ``done`` (in order); ``weights``: the
    fingerprint of the source model the stream started from."""
    tensors, meta = method.state_tensors()
    save_checkpoint(path, tensors, {**meta, "stream": stream_key(cell), "done": list(done), "weights": weights})


def load_stream(path: Path, method: Method, cell: Mapping[str, Any], names: Sequence[str], weights: str) -> int:
    """Load the stream's checkpoint into ``method`` when it is usable for ``cell`` and return how many of
    ``names`` (the stream's corruptions, in order) it has run; 0 (nothing loaded) when there is none or it
    is damaged, when it is of another stream or order, when it started from other source ``weights`` (a
    fingerprint) or has none, or when it is past ``cell``'s corruption."""
    if not checkpoint_exists(path):
        return 0
    try:  # a damaged sidecar or weights file (e.g. two shards of one grid wrote the two files in turn): replay
        side = read_meta(path)["meta"]
        done = list(side.get("done") or [])
        target = list(names).index(cell["corruption"])
        if side.get("stream") != stream_key(cell) or side.get("weights") != weights:
            return 0
        if not 0 < len(done) <= target or done != list(names)[: len(done)]:
            return 0
        tensors, meta = load_checkpoint(path)  # verified before anything is loaded into the method
    except (ValueError, OSError):
        return 0
    method.load_state_tensors(tensors, meta)
    return len(done)


def drop_stream(path: Path) -> None:
    """Remove the stream's checkpoint (its last corruption is measured)."""
    for suffix in (".safetensors", ".json"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)

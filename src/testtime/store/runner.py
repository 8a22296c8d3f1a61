"""Run a grid of cells into a results store: resumable, shardable, logged.

``run_grid(cells, evaluate_cell, store, shard=(i, n))`` evaluates the cells whose index in
``cells`` satisfies ``index % n == i`` and whose key is not stored yet, writing each result as soon
as it is measured (one transaction per cell). So:

- **resume**: a run killed after k cells keeps those k rows; running the same grid again evaluates
  only the rest, and ends with exactly the cells of an uninterrupted run;
- **a deadline**: ``stop_by`` (seconds since the epoch) starts no cell expected to end after it
  (expected: the mean wall time of the cells of its label, stored or run in this call, else of all
  cells run in this call, else 0), so a stop at a session's or an allocation's end loses no cell
  half-run;
- **shards**: independent jobs ``--shard 0/n`` ... ``--shard n-1/n`` split the grid with no overlap;
  they may share one store file (SQLite serialises their writes) or write their own stores, joined
  with :meth:`ResultStore.merge_from`.

Progress: a bar over the shard's cells (stored ones counted as done) and a line per cell, also
appended to ``<run_dir>/grid.log`` (the store's directory) with the time, shard, cell, result and
wall time.

Example::

    cells = [{"method": m, "corruption": c, "severity": 5, "seed": s, "protocol": "episodic",
              "backbone": "resnet8", "hparams": {}} for m in ("bn", "tent") for c in corrs for s in (0, 1)]
    run_grid(cells, lambda cell: {"accuracy": measure(cell)}, ResultStore.open(run_dir, create=True),
             shard=parse_shard("0/4"))
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from testtime.store.db import COST, PROVENANCE, ResultStore, cell_key

RESULT_FIELDS = ("accuracy", "n_images", "curve", *COST, *PROVENANCE)
LOG_NAME = "grid.log"


@dataclass(frozen=True)
class GridSummary:
    total: int  # cells in the whole grid
    in_shard: int  # cells of this shard
    skipped: int  # of those, already in the store
    ran: int  # evaluated and stored now
    left: int = 0  # of this shard's cells, not run because of ``stop_by``


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    i, sep, n = str(text).partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        raise ValueError(f"shard: expected I/N with integers, e.g. 0/4; got {text!r}") from None
    if not sep:
        raise ValueError(f"shard: expected I/N, e.g. 0/4; got {text!r}")
    check_shard(shard)
    return shard


def check_shard(shard: tuple[int, int]) -> None:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard: need 0 <= i < n and n >= 1, got {i}/{n}")


def describe_cell(cell: Mapping[str, Any]) -> str:
    hp = " ".join(f"{k}={v}" for k, v in sorted((cell.get("hparams") or {}).items()))
    return f"{_label(cell)} {cell['corruption']} s{cell['severity']} seed {cell['seed']}" + (f" [{hp}]" if hp else "")


def run_grid(
    cells: Sequence[Mapping[str, Any]],
    evaluate_cell: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    store: ResultStore,
    *,
    shard: tuple[int, int] = (0, 1),
    log_path: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_by: float | None = None,
    clock: Callable[[], float] = time.time,
) -> GridSummary:
    """Evaluate this shard's missing cells with ``evaluate_cell`` and store each result at once.

    ``cells``: identity fields as :meth:`ResultStore.put` takes them (``method``, ``corruption``,
    ``severity``, ``seed``, ``protocol``, ``backbone``, optional ``label``, ``dataset``, ``hparams``,
    ``config``). ``evaluate_cell(cell)`` returns ``accuracy`` (%) and optionally ``n_images``, the
    cost fields (``wall_s``, ``images_per_s``, ``peak_mem_mb``, ``forward_per_image``,
    ``backward_per_image``; when missing, ``wall_s`` is measured here, ``images_per_s`` derived from
    ``n_images`` and, on CUDA, ``peak_mem_mb`` read from ``torch.cuda.max_memory_allocated`` over
    the cell; passes per image only the caller can count), ``device`` (where it was measured,
    :func:`testtime.train.checkpoint.device_description`) and ``curve`` (accuracy after
    0..K iterations, stored in the curves table). ``log_path`` defaults to ``grid.log`` beside the
    store. All cells are checked (fields, duplicate keys) before any is evaluated. ``stop_by``: a
    deadline on ``clock`` (seconds since the epoch): no cell starts when ``clock()`` plus its expected
    wall time passes it (the mean ``wall_s`` of the stored cells of its label and of those run in
    this call, else the mean of all cells run in this call, else 0); the summary's ``left`` counts
    the cells not run, which the same call runs later.
    """
    check_shard(shard)
    keys = [cell_key(c) for c in cells]  # validates every cell before any work
    seen: dict[str, int] = {}
    for idx, k in enumerate(keys):
        if k in seen:
            raise ValueError(f"cells: cells {seen[k]} and {idx} have the same config (key {k[:12]})")
        seen[k] = idx
    i, n = shard
    mine = [idx for idx in range(len(cells)) if idx % n == i]
    todo = [idx for idx in mine if not store.has(keys[idx])]
    if log_path is None and store.path is not None:
        log_path = store.path.parent / LOG_NAME
    tag = f"shard {i}/{n}"

    def say(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} [grid] {tag}: {msg}"
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        if log is not None:
            log(line)

    say(f"{len(cells)} cells in the grid, {len(mine)} in this shard, {len(mine) - len(todo)} already stored, "
        f"{len(todo)} to run")
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress, desc=f"grid {tag}", unit="cell")
    ran = 0
    walls: list[float] = []  # of the cells run in this call
    by_label = _stored_walls(store) if stop_by is not None else {}
    try:
        for pos, idx in enumerate(todo, 1):
            cell = cells[idx]
            desc = describe_cell(cell)
            known = by_label.get(_label(cell)) or walls
            expected = sum(known) / len(known) if known else 0.0
            if stop_by is not None and clock() + expected > stop_by:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stop_by))
                say(f"stopped before cell {pos}/{len(todo)} (#{idx}): expected to end after {when} "
                    f"(about {expected:.0f}s a cell); {len(todo) - pos + 1} left, the same command resumes")
                break
            bar.set_postfix_str(desc)
            say(f"cell {pos}/{len(todo)} (#{idx}) start: {desc}")
            t0, c0 = time.perf_counter(), clock()
            cuda = _reset_cuda_peak()
            try:
                result = dict(evaluate_cell(cell))
            except BaseException as exc:
                say(f"cell #{idx} FAILED after {time.perf_counter() - t0:.1f}s: {type(exc).__name__}: {exc}")
                raise
            if cuda is not None and result.get("peak_mem_mb") is None:
                result["peak_mem_mb"] = cuda.max_memory_allocated() / 2**20
            _store_result(store, cell, result, time.perf_counter() - t0)
            walls.append(clock() - c0)
            by_label.setdefault(_label(cell), []).append(walls[-1])
            ran += 1
            bar.update(1)
            say(f"cell #{idx} done: {desc}: accuracy {result['accuracy']:.2f}% in {time.perf_counter() - t0:.1f}s")
    finally:
        bar.close()
    left = len(todo) - ran
    say(f"finished: ran {ran}, {len(mine) - len(todo)} were stored already" + (f", {left} left" if left else ""))
    return GridSummary(total=len(cells), in_shard=len(mine), skipped=len(mine) - len(todo), ran=ran, left=left)


def _label(cell: Mapping[str, Any]) -> str:
    return cell.get("label") or cell["method"]


def _stored_walls(store: ResultStore) -> dict[str, list[float]]:
    """The stored cells' wall times by label: the expected cost of the next cell of that label."""
    out: dict[str, list[float]] = {}
    for row in store.cells():
        if row.get("wall_s"):
            out.setdefault(_label(row), []).append(float(row["wall_s"]))
    return out


def _reset_cuda_peak():
    """``torch.cuda`` with its peak-memory counter reset, when torch is in use and CUDA is there; else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda


def _store_result(store: ResultStore, cell: Mapping[str, Any], result: dict[str, Any], wall_s: float) -> None:
    bad = sorted(set(result) - set(RESULT_FIELDS))
    if bad:
        raise ValueError(f"evaluate_cell returned unknown field(s) {bad}; valid: {list(RESULT_FIELDS)}")
    if "accuracy" not in result:
        raise ValueError("evaluate_cell must return 'accuracy' (%)")
    result.setdefault("wall_s", wall_s)
    if result.get("images_per_s") is None and result.get("n_images") and result["wall_s"]:
        result["images_per_s"] = result["n_images"] / result["wall_s"]
    curve = result.pop("curve", None)
    row = {**cell, **result}
    curves = [{**cell, "accuracies": list(curve)}] if curve is not None else []
    store.put_many([row], curves)  # the cell and its curve: one transaction

"""The clean accuracy of a bench grid's source models, kept in the results store (table ``models``).

Before its cells, a grid measures each source model it uses (one per model kind: ``supervised``,
``aligned``, ``probe``, ``joint``, ``ttt``, ...) on the whole clean test split, in eval mode and
with the test batch's BN statistics, as ``testtime train STAGE --eval-clean`` does. A model whose
row is stored (same kind, source settings, split, size and seed: :func:`testtime.store.model_key`)
is not measured again. Cells are not involved: their keys and results are the same with or without
these rows.

Each row also keeps the model's weights fingerprint (:meth:`BenchRun.weights`:
:func:`testtime.train.checkpoint.weights_fingerprint` of the source model, which methods adapt copies of).
A grid whose run dir now holds other weights than those its store's cells were measured on (the
models retrained, e.g. on another CPU, whose kernels round otherwise) stops with
:class:`WeightsChangedError` before its first cell: cells of two weights are not one model's.

Example::

    kinds = load_models(run)
    record_clean_accuracy(run, store, kinds)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from testtime.bench.cells import model_kind
from testtime.bench.evaluation import clean_accuracies
from testtime.store.db import ResultStore, model_key, weights_conflicts

if TYPE_CHECKING:
    from testtime.bench.cells import BenchRun


class WeightsChangedError(ValueError):
    """The run dir's source models are not the weights the store's cells were measured on."""


def load_models(run: BenchRun) -> list[str]:
    """Load (or train) every source model the grid uses; returns their kinds in order of first use."""
    kinds = list(dict.fromkeys(model_kind(label, spec) for label, spec in run.bench.methods.items()))
    for kind in kinds:
        run.model(kind)
    return kinds


def whole_test_split(data: Any) -> Any:
    """The whole clean test split the grid's subsets come from (the test subset when there is no pool)."""
    return data.pool if data.pool is not None else data.test


def model_row(run: BenchRun, kind: str) -> dict[str, Any]:
    """The identity fields of ``kind``'s clean-accuracy row (no accuracies yet) and its ``key``."""
    split = whole_test_split(run.data)
    row = {"kind": kind, "backbone": run.cfg.model.arch, "dataset": run.dataset(), "split": split.name,
           "n_images": len(split), "seed": run.cfg.seed, "identity": run.source_identity(kind)}
    row["key"] = model_key(kind, row["identity"], row["split"], row["n_images"], row["seed"])
    return row


def record_clean_accuracy(run: BenchRun, store: ResultStore, kinds: Sequence[str],
                          log: Callable[[str], None] | None = print) -> int:
    """Measure and store the clean accuracy of each model of ``kinds`` not stored yet; returns how many.

    Raises :class:`WeightsChangedError` (nothing written) when a model's stored row has another weights
    fingerprint than the model has now; a stored row without one (written before the column) gets it.
    """
    rows = {kind: {**model_row(run, kind), "weights": run.weights(kind)} for kind in kinds}
    stored = {r["key"]: r for r in store.models()}
    changed = weights_conflicts(stored.values(), rows.values())
    if changed:
        where = store.path or "the results store"
        raise WeightsChangedError(
            f"{where}: its cells were measured on other weights than the run dir holds now ({'; '.join(changed)}; "
            f"retrained, e.g. on another CPU?): move the store away or give another run dir")
    for kind, row in rows.items():
        old = stored.get(row["key"])
        if old is not None and not old.get("weights"):
            store.set_model_weights(row["key"], row["weights"])
            if log:
                log(f"[clean] {kind}: weights {row['weights'][:16]} recorded beside its stored row (written "
                    f"before weight fingerprints: not checked)")
    todo = [kind for kind in kinds if rows[kind]["key"] not in stored]
    if log and len(todo) < len(kinds):
        log(f"[clean] stored already: {', '.join(k for k in kinds if k not in todo)}")
    split = whole_test_split(run.data)
    named = ((kind, run.model(kind)) for kind in todo)
    for kind, acc, bn, wall in clean_accuracies(named, split, device=run.device, seed=run.cfg.seed):
        store.put_model({**rows[kind], "accuracy_eval": acc, "accuracy_test_bn": bn, "wall_s": wall})
        if log:
            log(f"[clean] {kind}: eval mode {acc:.2f}%, test-batch BN {bn:.2f}% on {split.name} "
                f"({len(split)} images) in {wall:.1f}s; weights {rows[kind]['weights'][:16]}")
    return len(todo)

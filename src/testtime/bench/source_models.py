"""The clean accuracy of a bench grid's source models, kept in the results store (table ``models``).

Before its cells, a grid measures each source model it uses (one per model kind: ``supervised``,
``aligned``, ``probe``, ``joint``, ``ttt``, ...) on the whole clean test split, in eval mode and
with the test batch's BN statistics, as ``testtime train STAGE --eval-clean`` does. A model whose
row is stored (same kind, source settings, split, size and seed: :func:`testtime.store.model_key`)
is not measured again. Cells are not involved: their keys and results are the same with or without
these rows.

Example::

    kinds = load_models(run)
    record_clean_accuracy(run, store, kinds)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from testtime.bench.cells import model_kind
from testtime.bench.evaluation import clean_accuracies
from testtime.store.db import ResultStore, model_key

if TYPE_CHECKING:
    from testtime.bench.cells import BenchRun


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
    """Measure and store the clean accuracy of each model of ``kinds`` not stored yet; returns how many."""
    rows = {kind: model_row(run, kind) for kind in kinds}
    todo = [kind for kind in kinds if not store.has_model(rows[kind]["key"])]
    if log and len(todo) < len(kinds):
        log(f"[clean] stored already: {', '.join(k for k in kinds if k not in todo)}")
    split = whole_test_split(run.data)
    named = ((kind, run.model(kind)) for kind in todo)
    for kind, acc, bn, wall in clean_accuracies(named, split, device=run.device, seed=run.cfg.seed):
        store.put_model({**rows[kind], "accuracy_eval": acc, "accuracy_test_bn": bn, "wall_s": wall})
        if log:
            log(f"[clean] {kind}: eval mode {acc:.2f}%, test-batch BN {bn:.2f}% on {split.name} "
                f"({len(split)} images) in {wall:.1f}s")
    return len(todo)

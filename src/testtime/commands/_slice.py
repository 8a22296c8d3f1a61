"""``--only LABELS`` and ``--seeds SEEDS``: the slice of a store's cells a command copies (merge, export)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from testtime.cli import UserError


def labels(text: str | None) -> set[str] | None:
    """``--only``'s method labels (comma-separated); None when not given."""
    if text is None:
        return None
    found = {s.strip() for s in text.split(",") if s.strip()}
    if not found:
        raise UserError("--only: give at least one method label, e.g. --only ttt,bn")
    return found


def seeds(text: str | None) -> set[int] | None:
    """``--seeds``' eval seeds (comma-separated integers); None when not given."""
    if text is None:
        return None
    try:
        found = {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, e.g. 1,2; got {text!r}") from None
    if not found:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 1,2")
    return found


def row_filter(only: str | None, seed_text: str | None) -> Callable[[Mapping[str, Any]], bool] | None:
    """The ``keep(row)`` of ``--only`` and ``--seeds`` (a cell's or curve's stored columns); None: every row."""
    want_labels, want_seeds = labels(only), seeds(seed_text)
    if want_labels is None and want_seeds is None:
        return None

    def keep(row: Mapping[str, Any]) -> bool:
        return ((want_labels is None or row["label"] in want_labels)
                and (want_seeds is None or row["seed"] in want_seeds))

    return keep

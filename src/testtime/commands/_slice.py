"""``--only LABELS``, ``--seeds SEEDS`` and ``--severities SEVERITIES``: the slice of a store's cells a
command reads or copies (report, merge, export)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from testtime.cli import UserError

# flag, its metavar, the stored column it selects on, the help's noun, an example value
FLAGS = (("--only", "LABELS", "label", "method labels", "ttt,bn"),
         ("--seeds", "SEEDS", "seed", "eval seeds", "1,2"),
         ("--severities", "SEVERITIES", "severity", "severities", "5"))


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """Add the three slice flags to a command whose cells are ``verb``-ed (report, copy, export)."""
    for flag, metavar, _, noun, _ in FLAGS:
        p.add_argument(flag, metavar=metavar, help=f"{verb} only the cells of these {noun} (comma-separated)")


def labels(text: str | None) -> set[str] | None:
    """``--only``'s method labels (comma-separated); None when not given."""
    if text is None:
        return None
    found = {s.strip() for s in text.split(",") if s.strip()}
    if not found:
        raise UserError("--only: give at least one method label, e.g. --only ttt,bn")
    return found


def integers(flag: str, text: str | None, example: str = "1,2") -> set[int] | None:
    """``--seeds``' or ``--severities``' integers (comma-separated); None when not given."""
    if text is None:
        return None
    try:
        found = {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, e.g. {example}; got {text!r}") from None
    if not found:
        raise UserError(f"{flag}: give at least one, e.g. {flag} {example}")
    return found


def wanted(args: argparse.Namespace) -> list[tuple[str, str, set[Any]]]:
    """(flag, stored column, the values asked for) of each slice flag given; [] when none is."""
    out: list[tuple[str, str, set[Any]]] = []
    for flag, _, column, _, example in FLAGS:
        text = getattr(args, flag[2:], None)
        values = labels(text) if flag == "--only" else integers(flag, text, example)
        if values is not None:
            out.append((flag, column, values))
    return out


def row_filter(args: argparse.Namespace) -> Callable[[Mapping[str, Any]], bool] | None:
    """The ``keep(row)`` of the slice flags (a cell's or curve's stored columns); None: every row.
    Every flag is parsed here, so a bad value fails before any work."""
    asked = wanted(args)
    if not asked:
        return None

    def keep(row: Mapping[str, Any]) -> bool:
        return all(row[column] in values for _, column, values in asked)

    return keep

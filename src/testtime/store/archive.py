"""A results store as plain text: one JSON object a line (JSONL), to commit to git and rebuild a store from.

A store (``results.sqlite``) lives in a git-ignored run directory; its export is a text file that
survives a change of machine and diffs well. The format (``testtime-store-jsonl``):

- line 1, the header: ``{"format":"testtime-store-jsonl","schema_version":1,"table":"meta","testtime":"0.1.0"}``
  (the store's schema version and the testtime that wrote the file; no time stamp);
- then one line per row of ``cells``, ``curves`` and ``models``: ``"table"`` and every column exactly as
  stored (``key``, ``config`` and ``hparams`` as their JSON text, ``created_utc``, ``device``, the cost
  columns; NULL as ``null``), keys sorted, no spaces, lines sorted by table then key.

So exporting the same store twice gives the same bytes, and a store that gained cells gives a diff of
those lines. ``*.jsonl.gz`` is the same text gzipped with no name or time in its header.

:func:`import_jsonl` checks the whole file before it writes anything (JSON, header, tables, columns and
their types, each key recomputed from its row) and then adds the rows the store does not hold, as
:meth:`ResultStore.merge_from` does, keeping their ``created_utc``. Rows are inserted in the order they
were measured (``created_utc``, then key), as ``testtime report`` orders its columns by insertion.

Example::

    export_jsonl("runs/cifar10-cpu", "runs/cifar10-cpu.jsonl.gz")
    import_jsonl("runs/cifar10-cpu.jsonl.gz", "runs/cifar10-cpu")   # on another machine
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from testtime.store.db import (
    ROW_TABLES,
    SCHEMA_VERSION,
    ResultStore,
    canonical_json,
    model_key,
    stored_identity_problem,
)

FORMAT = "testtime-store-jsonl"
SUFFIXES = (".jsonl", ".jsonl.gz")

Rows = dict[str, list[dict[str, Any]]]
Keep = Callable[[Mapping[str, Any]], bool]


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a store export (``*.jsonl`` or ``*.jsonl.gz``) rather than a store."""
    return str(path).endswith(SUFFIXES)


def header() -> dict[str, Any]:
    """The first line of an export (no time stamp: the same store always exports to the same bytes)."""
    from testtime import __version__

    return {"table": "meta", "schema_version": SCHEMA_VERSION, "testtime": __version__, "format": FORMAT}


def export_jsonl(store_path: str | Path, out_path: str | Path, keep: Keep | None = None) -> dict[str, int]:
    """Write every row of the store at ``store_path`` (a run directory or ``*.sqlite``; only read) to
    ``out_path`` (``*.jsonl``, or ``*.jsonl.gz`` gzipped); returns the rows written per table.

    ``keep(row)`` (a cell's or curve's stored columns, e.g. ``row["label"]``, ``row["seed"]``) chooses
    the cells and curves to write (default: all; model rows are always written). The file is written
    under a temporary name in the same folder and then renamed, so ``out_path`` is never half-written.
    """
    out = Path(out_path)
    if not is_archive(out):
        raise ValueError(f"{out}: an export is named *.jsonl or *.jsonl.gz")
    with ResultStore.copy_to_memory(store_path) as store:
        tables = store.rows(keep)
    lines = [canonical_json({**row, "table": table}) for table in ROW_TABLES
             for row in sorted(tables[table], key=lambda r: r["key"])]
    data = "\n".join([canonical_json(header()), *lines, ""]).encode()
    if out.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)  # no name in the header; time 0
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {t: len(tables[t]) for t in ROW_TABLES}


def read_jsonl(path: str | Path, keep: Keep | None = None) -> Rows:
    """The rows of an export, every line checked first, as :meth:`ResultStore.add_rows` takes them, in
    the order they were measured (``created_utc``, then key). ``keep`` chooses cells and curves.

    Any problem raises :class:`ValueError` with one line naming the file, the line and what is wrong.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read as a testtime store export ({exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    tables: Rows = {t: [] for t in ROW_TABLES}
    seen: dict[tuple[str, str], int] = {}
    for n, line in enumerate(lines, start=1):
        problem = _line_problem(line, n, tables, seen)
        if problem:
            raise ValueError(f"{path}: line {n}: {problem}")
    if not lines:
        raise ValueError(f"{path}: line 1: empty file; expected the header {canonical_json(header())}")
    for table, found in tables.items():
        found.sort(key=lambda r: (r["created_utc"], r["key"]))
        if keep is not None and table != "models":
            tables[table] = [r for r in found if keep(r)]
    return tables


def import_jsonl(path: str | Path, dest_store_path: str | Path) -> dict[str, int]:
    """Add the rows of the export at ``path`` that the store at ``dest_store_path`` (created when
    missing) does not hold, as they are (``created_utc``, ``device``, cost); a key held is kept as it is.

    The whole file is checked before anything is written (:func:`read_jsonl`): a bad file raises
    :class:`ValueError` and leaves DEST as it was (not created). Returns the rows added per table
    (``cells``, ``curves``, ``models``), ``held``, the cells DEST held already, and ``differ``, how
    many of those it holds with another accuracy.
    """
    tables = read_jsonl(path)
    with ResultStore.open(dest_store_path, create=True) as store:
        held, differ = store.held(tables["cells"])
        return {**store.add_rows(tables), "held": held, "differ": differ}


@cache
def _columns() -> dict[str, dict[str, tuple[str, bool]]]:
    """Each table's columns: name -> (declared type, whether it may be NULL), from the store's own schema."""
    with ResultStore.memory() as store:
        return {t: {r[1]: (r[2], not r[3] and r[1] != "key") for r in store.conn.execute(f"PRAGMA table_info({t})")}
                for t in ROW_TABLES}


def _type_ok(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "INTEGER":
        return isinstance(value, int)
    if kind == "REAL":
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, str)


def _line_problem(line: str, n: int, tables: Rows, seen: dict[tuple[str, str], int]) -> str | None:
    """What is wrong with line ``n`` (None when nothing); a good row is appended to ``tables``."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    table = obj.pop("table", None)
    if n == 1 or table == "meta":
        want = header()
        if n > 1:
            return "a second header (table 'meta')"
        if table != "meta":
            return f"expected the header {canonical_json(want)}"
        if obj.get("format") != FORMAT:
            return f"format {obj.get('format')!r} is not {FORMAT!r}"
        if obj.get("schema_version") != SCHEMA_VERSION:
            return f"schema_version {obj.get('schema_version')!r}; this testtime reads version {SCHEMA_VERSION}"
        return None
    if table not in ROW_TABLES:
        return f"unknown table {table!r}; valid: {list(ROW_TABLES)}"
    columns = _columns()[table]
    unknown = sorted(set(obj) - set(columns))
    if unknown:
        return f"{table}: unknown column(s) {unknown}"
    for name, (kind, nullable) in columns.items():
        value = obj.get(name)
        if value is None and not nullable:
            return f"{table}: column {name!r} is missing or null"
        if value is not None and not _type_ok(kind, value):
            return f"{table}: column {name!r} must be {kind}, got {value!r}"
    problem = _key_problem(table, obj)
    if problem:
        return f"{table}: {problem}"
    if (table, obj["key"]) in seen:
        return f"{table}: key {obj['key']} is also on line {seen[(table, obj['key'])]}"
    seen[(table, obj["key"])] = n
    tables[table].append(obj)
    return None


def _key_problem(table: str, row: Mapping[str, Any]) -> str | None:
    """Why a row's key is not the one its identity gives (None when it is)."""
    if table != "models":
        return stored_identity_problem(row)
    try:
        identity = json.loads(row["identity"])
        key = model_key(row["kind"], identity, row["split"], row["n_images"], row["seed"])
    except (TypeError, ValueError) as exc:
        return f"identity is not a JSON object ({exc})"
    return None if row["key"] == key else f"key {row['key']!r} is not the model_key of its row (expected {key!r})"

"""The results store: one SQLite file per run directory (``<run_dir>/results.sqlite``).

A **cell** is one measured point of an experiment grid: one method (with its hyperparameters) on
one corruption at one severity, with one seed, under one protocol, on one dataset and backbone.
Its key is the sha256 of the canonical JSON (sorted keys, no spaces) of its full resolved config,
so the same experiment always has the same key and a grid can be resumed by skipping stored keys.

Tables (schema version :data:`SCHEMA_VERSION`; documented in ``docs/benchmark.md``):

- ``meta(name, value)``: ``schema_version``, ``created_utc``, ``testtime`` (version that created it);
- ``cells``: identity columns (``method``, ``label``, ``corruption``, ``severity``, ``seed``,
  ``protocol``, ``backbone``, ``dataset``, ``hparams`` JSON, ``config`` JSON), the result
  (``accuracy`` in %, ``n_images``) and the cost (``wall_s``, ``images_per_s``, ``peak_mem_mb``,
  ``forward_per_image``, ``backward_per_image``; NULL when not measured) and ``device``, where it was
  measured (e.g. ``cpu (AMD EPYC, AVX512, 2 threads)``, ``cuda (NVIDIA H200)``; not part of the key:
  the same cell measured elsewhere has the same key. Stores written before the column get it, without
  a version change, from their first write; their earlier cells read NULL);
- ``curves``: the same identity columns and ``accuracies``, a JSON list of accuracy (%) after
  0, 1, ... test-time iterations (the CTA paper's Fig. 3);
- ``models``: the clean accuracy of each source model a grid used: ``kind``, ``backbone``,
  ``dataset``, ``split`` and ``n_images`` (the whole test split), ``seed`` (of its shuffle),
  ``accuracy_eval`` and ``accuracy_test_bn`` (%, eval mode / test-batch BN statistics), ``wall_s``
  and ``identity`` (JSON: the settings the model depends on); key: :func:`model_key`; and
  ``weights``, the sha256 of the model's state dict
  (:func:`testtime.train.checkpoint.weights_fingerprint`; not part of the key: the same settings
  retrained on another CPU give other weights, which a grid and ``testtime merge`` refuse to mix,
  see :func:`weights_conflicts`). Stores written before this table have none: it is added, without
  a version change, by the first :meth:`ResultStore.put_model`, and reads of a store without it find
  no rows; a ``models`` table written before the ``weights`` column gets it the same way (NULL:
  unknown).

Every write is one transaction, so a killed process never leaves a half-written row. A store
written by another schema version is refused with :class:`StoreVersionError` and never modified.

Example::

    store = ResultStore.open("runs/x/results.sqlite", create=True)
    row = {"method": "tent", "corruption": "fog", "severity": 5, "seed": 0, "protocol": "episodic",
           "backbone": "resnet8", "hparams": {"lr": 1e-3}, "accuracy": 61.2}
    store.put(row)
    assert store.has(cell_key(row))
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STORE_NAME = "results.sqlite"

IDENTITY = ("method", "label", "corruption", "severity", "seed", "protocol", "backbone", "dataset", "hparams")
COST = ("wall_s", "images_per_s", "peak_mem_mb", "forward_per_image", "backward_per_image")
PROVENANCE = ("device",)  # where a cell was measured: stored beside its result, not part of its key
REQUIRED = ("method", "corruption", "severity", "seed", "protocol", "backbone")

_IDENTITY_SQL = """
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    corruption TEXT NOT NULL,
    severity INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    backbone TEXT NOT NULL,
    dataset TEXT NOT NULL,
    hparams TEXT NOT NULL,
    config TEXT NOT NULL,
    created_utc TEXT NOT NULL"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells ({_IDENTITY_SQL},
    accuracy REAL NOT NULL,
    n_images INTEGER,
    wall_s REAL,
    images_per_s REAL,
    peak_mem_mb REAL,
    forward_per_image REAL,
    backward_per_image REAL,
    device TEXT
);
CREATE TABLE IF NOT EXISTS curves ({_IDENTITY_SQL},
    accuracies TEXT NOT NULL
);
"""
# added after schema version 1 without a version change: created by new stores and by the first put_model
_MODELS_SQL = """
CREATE TABLE IF NOT EXISTS models (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    backbone TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    accuracy_eval REAL NOT NULL,
    accuracy_test_bn REAL NOT NULL,
    wall_s REAL,
    identity TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    weights TEXT
);
"""
MODEL_PROVENANCE = ("weights",)  # the model's weights_fingerprint: beside its row, not part of its key
ROW_TABLES = ("cells", "curves", "models")  # the tables of measured rows (meta is the store's own)
MODEL_FIELDS = ("kind", "backbone", "dataset", "split", "n_images", "seed", "accuracy_eval", "accuracy_test_bn")


class StoreVersionError(ValueError):
    """The file is not a results store this version of testtime can read."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and tuples as lists: the same config always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def cell_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """The full resolved config of a cell: its ``config`` mapping (if any) plus the identity fields.

    Metrics (accuracy, cost, curves) are not part of it, so a measured row and the cell it came
    from have the same key.
    """
    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise ValueError(f"cell: missing field(s) {missing}; a cell needs {list(REQUIRED)}")
    ident = {k: row[k] for k in IDENTITY if row.get(k) is not None}
    ident.setdefault("hparams", {})
    return {**dict(row.get("config") or {}), **ident}


def cell_key(row: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of :func:`cell_config`."""
    return hashlib.sha256(canonical_json(cell_config(row)).encode()).hexdigest()


def model_key(kind: str, identity: Mapping[str, Any], split: str, n_images: int, seed: int) -> str:
    """sha256 (hex) of the canonical JSON of a source model's clean-accuracy measurement: its kind, the
    settings it depends on (``identity``), the split's name and size, and the seed of the shuffle."""
    ident = {"kind": kind, "identity": dict(identity), "split": split, "n_images": n_images, "seed": seed}
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()


def _model_values(row: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in (*MODEL_FIELDS, "identity") if row.get(k) is None]
    if missing:
        raise ValueError(f"model: missing field(s) {missing}; a model row needs {[*MODEL_FIELDS, 'identity']}")
    n, seed = row["n_images"], row["seed"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"model: n_images must be a positive integer and seed an integer, got {n!r} and {seed!r}")
    values: dict[str, Any] = {"key": model_key(str(row["kind"]), row["identity"], str(row["split"]), n, seed)}
    values |= {k: str(row[k]) for k in ("kind", "backbone", "dataset", "split")}
    values |= {"n_images": n, "seed": seed}
    for k in ("accuracy_eval", "accuracy_test_bn"):
        acc = _finite(k, row[k])
        if not 0.0 <= acc <= 100.0:
            raise ValueError(f"model: {k} is a percentage in [0, 100], got {acc}")
        values[k] = acc
    values["wall_s"] = _finite("wall_s", row.get("wall_s"))
    values["identity"] = canonical_json(row["identity"])
    values["created_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    values["weights"] = None if row.get("weights") is None else str(row["weights"])
    return values


def weights_conflicts(held: Iterable[Mapping[str, Any]], incoming: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per source model that ``incoming`` model rows give other weights than ``held`` ones do.

    Rows pair by key (the same kind, settings, split and seed); a row without a ``weights``
    fingerprint (a store written before the column) pairs with anything. Cells measured on two
    different weights of one model cannot be paired or averaged as one model's.
    """
    known = {r["key"]: r for r in held if r.get("weights")}
    out = []
    for r in incoming:
        h = known.get(r["key"])
        if h is not None and r.get("weights") and r["weights"] != h["weights"]:
            out.append(f"source model {r['kind']!r} (model key {r['key'][:12]}...): weights {h['weights'][:16]}... "
                       f"against {r['weights'][:16]}...")
    return out


def _identity_values(row: Mapping[str, Any]) -> dict[str, Any]:
    cfg = cell_config(row)
    sev, seed = row["severity"], row["seed"]
    if not isinstance(sev, int) or isinstance(sev, bool) or not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"cell: severity and seed must be integers, got {sev!r} and {seed!r}")
    return {
        "key": cell_key(row),
        "method": str(row["method"]),
        "label": str(row.get("label") or row["method"]),
        "corruption": str(row["corruption"]),
        "severity": sev,
        "seed": seed,
        "protocol": str(row["protocol"]),
        "backbone": str(row["backbone"]),
        "dataset": str(row.get("dataset") or ""),
        "hparams": canonical_json(row.get("hparams") or {}),
        "config": canonical_json(cfg),
        "created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _finite(name: str, value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"cell: {name} must be finite, got {value!r}")
    return v


def _curve_values(row: Mapping[str, Any]) -> dict[str, Any]:
    acc = row.get("accuracies")
    if acc is None or len(acc) == 0:
        raise ValueError("curve: 'accuracies' must be a non-empty list of accuracies (%)")
    return {**_identity_values(row), "accuracies": json.dumps([_finite("accuracies", a) for a in acc])}


def stored_identity_problem(row: Mapping[str, Any]) -> str | None:
    """Why a cell or curve row, as stored (``config``, ``hparams`` as JSON text), does not match its key, or
    None when it does: ``key`` must be :func:`cell_key` of its ``config`` and the identity columns the
    values :meth:`ResultStore.put` derives from that config (``created_utc`` and results are not checked)."""
    try:
        cfg = json.loads(row["config"])
    except (TypeError, ValueError):
        return "config is not JSON text"
    if not isinstance(cfg, dict):
        return "config is not a JSON object"
    try:  # the config holds the identity fields it was made from, so put() of it gives the same columns
        expect = _identity_values({**{k: cfg[k] for k in IDENTITY if k in cfg}, "config": cfg})
    except (TypeError, ValueError) as exc:
        return f"config is not a cell's config ({exc})"
    for k, v in expect.items():
        if k != "created_utc" and row.get(k) != v:
            what = "is not the cell_key of its config" if k == "key" else "does not match its config"
            return f"{k} {row.get(k)!r} {what} (expected {v!r})"
    return None


class ResultStore:
    """A results store (SQLite). Open with :meth:`open` or :meth:`memory`; use as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self.conn = conn
        self.path = path
        self._has_provenance = False  # cells.device checked (and added when missing) on the first write
        conn.row_factory = sqlite3.Row

    # ----- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> ResultStore:
        """Open the store at ``path`` (a ``*.sqlite`` file, or a run directory holding ``results.sqlite``).

        ``create=True`` creates a missing store. The version is checked read-only first: a store of
        another schema version, or a file that is not a store, raises :class:`StoreVersionError`
        and is left untouched.
        """
        path = store_path(path)
        if path.exists() and not (create and path.stat().st_size == 0):  # 0 bytes: another job is creating it
            check_version(path)
            conn = sqlite3.connect(path, timeout=60.0)
            return cls(conn, path)
        if not create:
            raise FileNotFoundError(f"{path}: no results store (create one with ResultStore.open(..., create=True))")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=60.0)
        _create(conn)
        check_version(path)
        return cls(conn, path)

    @classmethod
    def memory(cls) -> ResultStore:
        conn = sqlite3.connect(":memory:")
        _create(conn)
        return cls(conn, None)

    @classmethod
    def copy_to_memory(cls, path: str | Path) -> ResultStore:
        """An in-memory copy of the store at ``path`` (checked first; the file is only read)."""
        path = store_path(path)
        check_version(path)
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        mem = sqlite3.connect(":memory:")
        try:
            src.backup(mem)
        finally:
            src.close()
        return cls(mem, None)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- writing ------------------------------------------------------------------------
    def put(self, row: Mapping[str, Any]) -> str:
        """Insert or replace one cell (one transaction); returns its key.

        ``row`` holds the identity fields (``method``, ``corruption``, ``severity``, ``seed``,
        ``protocol``, ``backbone``; optional ``label``, ``dataset``, ``hparams``, ``config``), the
        ``accuracy`` (%) and optionally ``n_images``, the cost fields :data:`COST` and ``device``.
        """
        values = self._cell_values(row)
        self._add_provenance()
        with self.conn:
            self._insert("cells", values, replace=True)
        return values["key"]

    def put_curve(self, row: Mapping[str, Any]) -> str:
        """Insert or replace one curve: identity fields plus ``accuracies`` (after 0..K iterations)."""
        values = _curve_values(row)
        with self.conn:
            self._insert("curves", values, replace=True)
        return values["key"]

    def put_model(self, row: Mapping[str, Any]) -> str:
        """Insert or replace the clean accuracy of one source model (one transaction); returns its key.

        ``row`` holds :data:`MODEL_FIELDS`, ``identity`` (the settings the model depends on) and
        optionally ``wall_s``. A store without the ``models`` table gets it here.
        """
        values = _model_values(row)
        self._add_models_table()
        with self.conn:
            self._insert("models", values, replace=True)
        return values["key"]

    def set_model_weights(self, key: str, weights: str) -> None:
        """Record the weights fingerprint of a stored model row that has none (written before the column)."""
        self._add_models_table()
        with self.conn:
            self.conn.execute("UPDATE models SET weights = ? WHERE key = ? AND weights IS NULL", (weights, key))

    def put_many(self, rows: Iterable[Mapping[str, Any]], curves: Iterable[Mapping[str, Any]] = (),
                 *, replace: bool = True) -> int:
        """Write many cells and curves in ONE transaction (all or nothing); returns the number written.

        ``replace=False`` keeps cells already stored (``INSERT OR IGNORE``).
        """
        cells = [self._cell_values(r) for r in rows]
        curve_values = [_curve_values(c) for c in curves]
        self._add_provenance()
        with self.conn:
            for v in cells:
                self._insert("cells", v, replace=replace)
            for v in curve_values:
                self._insert("curves", v, replace=replace)
        return len(cells) + len(curve_values)

    def merge_from(self, other: str | Path, keep: Callable[[Mapping[str, Any]], bool] | None = None) -> int:
        """Copy the cells, curves and model rows of another store (e.g. a shard run elsewhere) not already here.

        ``keep(row)`` (given a cell's or curve's stored columns, e.g. ``row["label"]``, ``row["seed"]``)
        chooses which cells and curves to copy (default: all). Returns the number of cells added.
        """
        with ResultStore.copy_to_memory(other) as src:
            tables = src.rows(keep)
        return self.add_rows(tables)["cells"]

    def rows(self, keep: Callable[[Mapping[str, Any]], bool] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every row of ``cells``, ``curves`` and ``models`` with its columns exactly as stored (JSON columns
        as text), in insertion order: what :meth:`add_rows` takes. ``keep(row)`` chooses cells and curves."""
        out: dict[str, list[dict[str, Any]]] = {}
        for table in ROW_TABLES:
            if table == "models" and not self._has_models():
                out[table] = []
                continue
            found = [dict(r) for r in self.conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            out[table] = found if keep is None or table == "models" else [r for r in found if keep(r)]
        return out

    def add_rows(self, tables: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, int]:
        """Insert stored rows (as :meth:`rows` gives them; any of ``cells``, ``curves``, ``models``) whose
        key is not here yet, as they are (``created_utc``, ``device`` and cost included), in ONE
        transaction; a key already here is kept as it is. Returns the number added per table. Model rows
        with other weights than this store's rows of the same key raise :class:`ValueError`, nothing
        written (:func:`weights_conflicts`)."""
        added = dict.fromkeys(ROW_TABLES, 0)
        unknown = sorted(set(tables) - set(ROW_TABLES))
        if unknown:
            raise ValueError(f"rows: unknown table(s) {unknown}; valid: {list(ROW_TABLES)}")
        items = {t: list(tables.get(t, ())) for t in ROW_TABLES}
        clash = weights_conflicts(self.models(), items["models"]) if items["models"] else []
        if clash:
            raise ValueError(f"rows: measured on other weights than this store's ({'; '.join(clash)}); nothing was "
                             f"written")
        self._add_provenance()
        if items["models"]:
            self._add_models_table()
        with self.conn:
            for table, values in items.items():
                for v in values:
                    added[table] += self._insert(table, v, replace=False)
        return added

    def held(self, cells: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
        """Of these stored cell rows, how many keys this store holds already, and how many of those it
        holds with another accuracy (measured elsewhere: another machine or device)."""
        here = {r[0]: r[1] for r in self.conn.execute("SELECT key, accuracy FROM cells")}
        same = [c for c in cells if c["key"] in here]
        return len(same), sum(1 for c in same if abs(c["accuracy"] - here[c["key"]]) > 1e-9)

    def _cell_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        if row.get("accuracy") is None:
            raise ValueError("cell: 'accuracy' (%) is required")
        values = _identity_values(row)
        acc = _finite("accuracy", row["accuracy"])
        if not 0.0 <= acc <= 100.0:
            raise ValueError(f"cell: accuracy is a percentage in [0, 100], got {acc}")
        values["accuracy"] = acc
        values["n_images"] = None if row.get("n_images") is None else int(row["n_images"])
        for k in COST:
            values[k] = _finite(k, row.get(k))
        values["device"] = None if row.get("device") is None else str(row["device"])
        return values

    def _add_provenance(self) -> None:
        """Give a store written before the :data:`PROVENANCE` columns those columns (NULL in its cells);
        checked once per open store, not at every write."""
        if self._has_provenance:
            return
        self._add_text_columns("cells", PROVENANCE)
        self._has_provenance = True

    def _add_models_table(self) -> None:
        """Create the ``models`` table in a store written before it, and its :data:`MODEL_PROVENANCE`
        columns in one written before them (NULL in its rows)."""
        self.conn.execute(_MODELS_SQL)  # IF NOT EXISTS
        self._add_text_columns("models", MODEL_PROVENANCE)

    def _add_text_columns(self, table: str, columns: Iterable[str]) -> None:
        """Add the TEXT ``columns`` that ``table`` lacks (a store written before them)."""
        have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
        for col in columns:
            if col not in have:
                try:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} TEXT")
                except sqlite3.OperationalError as exc:  # a shard sharing the store added it just now
                    if "duplicate column" not in str(exc):
                        raise

    def _insert(self, table: str, values: Mapping[str, Any], *, replace: bool) -> int:
        """Write one row; returns 1 if written, 0 if ignored (``replace=False`` and its key is here)."""
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        return self.conn.execute(f"{verb} INTO {table} ({cols}) VALUES ({marks})", tuple(values.values())).rowcount

    # ----- reading ------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM cells WHERE key = ?", (key,)).fetchone() is not None

    def has_model(self, key: str) -> bool:
        """Whether the clean accuracy of the source model with this :func:`model_key` is stored."""
        if not self._has_models():
            return False
        return self.conn.execute("SELECT 1 FROM models WHERE key = ?", (key,)).fetchone() is not None

    def models(self) -> list[dict[str, Any]]:
        """The source models' clean-accuracy rows in insertion order (``identity`` as a dict); none in a
        store written before the table."""
        if not self._has_models():
            return []
        out = [dict(r) for r in self.conn.execute("SELECT * FROM models ORDER BY rowid")]
        for d in out:
            d["identity"] = json.loads(d["identity"])
        return out

    def _has_models(self) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'models'"
        return self.conn.execute(q).fetchone() is not None

    def keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT key FROM cells")}

    def count(self, table: str = "cells") -> int:
        if table not in ("cells", "curves"):
            raise ValueError(f"table must be 'cells' or 'curves', got {table!r}")
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def cells(self, **where: Any) -> list[dict[str, Any]]:
        """Stored cells in insertion order, filtered by equality on identity columns.

        ``store.cells(method="tent", severity=5)``; ``hparams`` rows come back as dicts.
        """
        return self._select("cells", where)

    def curves(self, **where: Any) -> list[dict[str, Any]]:
        out = self._select("curves", where)
        for r in out:
            r["accuracies"] = json.loads(r["accuracies"])
        return out

    def distinct(self, column: str, table: str = "cells") -> list[Any]:
        """The distinct values of an identity column, in order of first insertion."""
        if column not in IDENTITY:
            raise ValueError(f"column must be one of {list(IDENTITY)}, got {column!r}")
        if table not in ("cells", "curves"):
            raise ValueError(f"table must be 'cells' or 'curves', got {table!r}")
        q = f"SELECT {column} FROM {table} GROUP BY {column} ORDER BY MIN(rowid)"
        return [r[0] for r in self.conn.execute(q)]

    def _select(self, table: str, where: Mapping[str, Any]) -> list[dict[str, Any]]:
        bad = sorted(set(where) - set(IDENTITY) - {"key"})
        if bad:
            raise ValueError(f"filter: unknown column(s) {bad}; valid: {['key', *IDENTITY]}")
        conds = " AND ".join(f"{k} = ?" for k in where)
        args = tuple(canonical_json(v) if k == "hparams" else v for k, v in where.items())
        q = f"SELECT * FROM {table}" + (f" WHERE {conds}" if conds else "") + " ORDER BY rowid"
        out = []
        for r in self.conn.execute(q, args):
            d = dict(r)
            d["hparams"] = json.loads(d["hparams"])
            d["config"] = json.loads(d["config"])
            out.append(d)
        return out


def store_path(path: str | Path) -> Path:
    """``path`` itself if it names a file (an existing one, or ``*.sqlite``), else ``path/results.sqlite``."""
    path = Path(path)
    return path if path.is_file() or path.suffix in (".sqlite", ".db") else path / STORE_NAME


def _create(conn: sqlite3.Connection) -> None:
    from testtime import __version__

    meta = {"schema_version": str(SCHEMA_VERSION), "created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "testtime": __version__}
    inserts = "".join(f"INSERT OR IGNORE INTO meta (name, value) VALUES ('{k}', '{v}');" for k, v in meta.items())
    # schema and version in one transaction; IF NOT EXISTS / OR IGNORE: shards may create the store at once
    conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + _MODELS_SQL + inserts + "COMMIT;")


def check_version(path: Path) -> int:
    """Read (read-only) the schema version of the store at ``path``; raise unless it is ours."""
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreVersionError(f"{path}: cannot open as a results store ({exc})") from exc
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreVersionError(f"{path}: not a testtime results store ({exc})") from exc
    finally:
        conn.close()
    if row is None:
        raise StoreVersionError(f"{path}: not a testtime results store (no schema_version)")
    try:
        version = int(row[0])
    except ValueError as exc:
        raise StoreVersionError(f"{path}: schema_version {row[0]!r} is not an integer") from exc
    if version != SCHEMA_VERSION:
        raise StoreVersionError(f"{path}: results store schema version {version}; this testtime reads version "
                                f"{SCHEMA_VERSION} (left unmodified; re-run, or use the testtime that wrote it)")
    return version

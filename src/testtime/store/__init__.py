"""The results store (SQLite, one per run directory), its importer from JSON results, the grid runner."""

from testtime.store.db import (
    SCHEMA_VERSION,
    STORE_NAME,
    ResultStore,
    StoreVersionError,
    canonical_json,
    cell_config,
    cell_key,
    model_key,
    weights_conflicts,
)
from testtime.store.importer import import_results_json, result_files
from testtime.store.runner import GridSummary, parse_shard, run_grid

__all__ = [
    "SCHEMA_VERSION", "STORE_NAME", "GridSummary", "ResultStore", "StoreVersionError", "canonical_json",
    "cell_config", "cell_key", "import_results_json", "model_key", "parse_shard", "result_files", "run_grid",
    "weights_conflicts",
]  # fmt: skip

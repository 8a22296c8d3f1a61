"""The report's table of the source models' clean accuracy (the store's ``models`` table).

One row per stored model: kind, backbone, dataset, the split and its size, the accuracy (%) in
eval mode and with the test batch's BN statistics, and the first 16 hex digits of its weights
fingerprint (sha256 of its state dict; blank for a row stored before fingerprints). ``models.csv``
adds the seed of the shuffle, the wall time, the row's key and the whole fingerprint.

Example::

    md = models_markdown(store.models())
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

TITLE = "Source models: clean accuracy"
CSV_FIELDS = ("kind", "backbone", "dataset", "split", "n_images", "seed", "accuracy_eval", "accuracy_test_bn",
              "wall_s", "key", "weights")


def models_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown section (heading and table) of the model rows; empty text when there are none."""
    if not rows:
        return ""
    header = "| model kind | backbone | dataset | split (n images) | eval mode % | test-batch BN % | weights |"
    lines = [f"### {TITLE}", "", header, "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['backbone']} | {r['dataset']} | {r['split']} ({r['n_images']:,}) | "
                     f"{r['accuracy_eval']:.2f} | {r['accuracy_test_bn']:.2f} | {(r.get('weights') or '')[:16]} |")
    return "\n".join(lines)


def models_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The model rows as CSV (header :data:`CSV_FIELDS`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in rows:
        w.writerow([r.get(k) for k in CSV_FIELDS])
    return buf.getvalue()

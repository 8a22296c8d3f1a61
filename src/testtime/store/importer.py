"""Import today's JSON results (``results.json``, ``bench-*.json``) into a results store.

Both files hold ``rows``: one entry per method row with per-corruption ``accuracy`` (%) and
``total`` (images), the row's ``wall_s`` and ``settings``; the top level holds the resolved
pipeline ``config`` and the ``protocol`` line. ``results.json`` (``testtime cta``, written by
:func:`testtime.train.pipeline.evaluate_pipeline`) also holds ``heldout.curves``: accuracy after
0..K test-time iterations per learning-rate candidate and held-out corruption (Fig. 3).

Each (row, corruption) becomes one cell:

- ``label`` is the row name (``supervised+bn``, ``cta-paper-settings``), ``method`` the registered
  method it ran (``bn``, ``cta``); ``hparams`` are the row's settings plus ``order`` (predict
  before / after the update, read from the row's protocol line);
- ``protocol`` is the protocol line without its ``predict=...`` part (that is per method, in
  ``hparams``), so CTA's rows and the baselines measured under the same protocol share a table;
- ``backbone`` is ``config.model.arch`` (``/<norm>`` appended unless batch norm), ``dataset`` the
  data config's dataset and root, ``seed`` the pipeline seed, ``severity`` ``config.eval.severity``;
- cost: the JSON files time whole rows, so a cell gets the row's wall time shared in proportion
  to its images, and the row's images/s; peak memory and passes per image were not recorded (NULL).

The key of an imported cell is computed from the same fields (plus the whole pipeline config), so
importing a file twice, or a ``results.json`` and a ``bench-*.json`` of one run, never duplicates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testtime.store.db import ResultStore

_PREDICT = re.compile(r",?\s*predict=(?:method default(?: \((before|after)\))?|(before|after)) update")


def split_protocol(line: str) -> tuple[str, str | None]:
    """``"protocol=episodic, reset=batch, predict=after update, seed=0"`` -> (the line without the
    predict part, ``"after"``); the order is None when the line says only "method default"."""
    m = _PREDICT.search(line)
    if not m:
        return line, None
    return (line[: m.start()] + line[m.end():]).strip(", "), m.group(1) or m.group(2)


def backbone_of(config: Mapping[str, Any]) -> str:
    model = config.get("model") or {}
    arch = str(model.get("arch", "unknown"))
    norm = model.get("norm", "batch")
    return arch if norm in (None, "batch") else f"{arch}/{norm}"


def dataset_of(config: Mapping[str, Any]) -> str:
    data = config.get("data") or {}
    name = str(data.get("dataset", "unknown"))
    where = Path(data["root"]).name if data.get("root") else (f"${data['root_env']}" if data.get("root_env") else "")
    per_class = data.get("test_per_class")
    return name + (f" ({where})" if where else "") + (f", {per_class}/class" if per_class else "")


def rows_from_results(results: Mapping[str, Any], source: str = "results") -> tuple[list[dict], list[dict]]:
    """Cells and curves (as :meth:`ResultStore.put_many` takes them) from a results dict."""
    cfg = results.get("config")
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{source}: no 'config' (not a testtime results.json / bench-*.json)")
    # a run still in progress may have written only its config and clean accuracies: nothing to import yet
    severity = int(results.get("severity", (cfg.get("eval") or {}).get("severity", 5)))
    seed = int(results.get("seed", cfg.get("seed", 0)))
    base = {"severity": severity, "seed": seed, "backbone": backbone_of(cfg), "dataset": dataset_of(cfg),
            "config": {"run_config": cfg}}
    top_protocol, _ = split_protocol(str(results.get("protocol", "")))
    cells = []
    for label, row in (results.get("rows") or {}).items():
        acc: Mapping[str, float] = row.get("accuracy") or {}
        total: Mapping[str, int] = row.get("total") or {}
        protocol, order = split_protocol(str(row.get("protocol", "")))
        order = row.get("order") or order
        hparams = {**(row.get("settings") or {}), **({"order": order} if order else {})}
        n_all = sum(int(total.get(c, 0)) for c in acc)
        wall = row.get("wall_s")
        for corruption, a in acc.items():
            n = int(total[corruption]) if corruption in total else None
            cell = {**base, "method": row.get("method", label), "label": label, "corruption": corruption,
                    "protocol": top_protocol or protocol, "hparams": hparams, "accuracy": float(a), "n_images": n}
            if wall and n_all and n is not None:
                cell["wall_s"] = float(wall) * n / n_all
                cell["images_per_s"] = n_all / float(wall)
            for k, v in (row.get("cost") or {}).items():  # measured over the whole run: the same for each corruption
                if k in ("peak_mem_mb", "forward_per_image", "backward_per_image") and v is not None:
                    cell[k] = float(v)
            cells.append(cell)
    return cells, _curves(results, cfg, base)


def _curves(results: Mapping[str, Any], cfg: Mapping[str, Any], base: Mapping[str, Any]) -> list[dict]:
    held = results.get("heldout")
    if not held or not held.get("curves"):
        return []
    from testtime.bench.protocols import get_protocol

    ttt = cfg.get("ttt") or {}
    proto = get_protocol("episodic", batch_size=int(ttt.get("batch_size", 128)), seed=int(ttt.get("seed", 0)))
    protocol, _ = split_protocol(proto.describe())
    out = []
    for lr, curve in held["curves"].items():
        hparams = {"lr": float(lr), "tau": ttt.get("tau"), "bn": ttt.get("bn"), "order": "after"}
        for corruption, accs in (curve.get("per_domain") or {}).items():
            out.append({**base, "method": "cta", "label": "cta", "corruption": corruption, "protocol": protocol,
                        "hparams": hparams, "accuracies": [float(a) for a in accs],
                        "config": {**base["config"], "split": "heldout"}})
    return out


def import_results_json(path: str | Path, store: ResultStore, *, replace: bool = True) -> int:
    """Import one ``results.json`` / ``bench-*.json`` into ``store`` (one transaction); returns rows written."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read JSON results ({exc})") from exc
    if not isinstance(results, Mapping):
        raise ValueError(f"{path}: expected a JSON object")
    cells, curves = rows_from_results(results, str(path))
    return store.put_many(cells, curves, replace=replace)


def result_files(run_dir: str | Path) -> list[Path]:
    """The JSON results of a run directory: ``results.json`` first, then ``bench-*.json`` (sorted)."""
    run_dir = Path(run_dir)
    files = [run_dir / "results.json"] if (run_dir / "results.json").is_file() else []
    return files + sorted(run_dir.glob("bench-*.json"))

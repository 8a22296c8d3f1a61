"""Hyperparameter choice on the held-out corruptions (never on the test corruptions).

For each method label and protocol, every combination of its ``candidates`` is evaluated under that
protocol on the held-out subset (``data.heldout_per_class`` per class, disjoint from every test
subset) corrupted by the bench's ``heldout`` corruptions at ``heldout_severity``; the combination with
the best mean accuracy over them is chosen (the first listed on ties). The choice and every
candidate's mean are recorded with each cell of that label. Means are cached in
``<run_dir>/selection.json`` (keyed by the hash of everything they depend on), so a resumed run or
another shard does not measure them again.

Example::

    chosen, record = choose(run, "tent", "continual")   # ({"lr": 1e-3}, {"on": [...], "means": ...})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testtime.bench.cells import BenchRun, model_kind
from testtime.bench.runner import evaluate
from testtime.bench.spec import candidate_sets, method_config
from testtime.config import config_to_dict
from testtime.store.db import canonical_json
from testtime.train.checkpoint import _atomic_write

SELECTION_FILE = "selection.json"


def choose(run: BenchRun, label: str, protocol: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The chosen candidate values of ``label`` under ``protocol``, and the record of the choice (or None)."""
    import hashlib

    spec = run.bench.methods[label]
    cands = candidate_sets(spec)
    if cands == [{}]:
        return {}, None
    if len(run.data.heldout) == 0:
        raise ValueError(f"methods.{label}.candidates: the held-out subset is empty (source.data.heldout_per_class)")
    path = Path(run.run_dir) / SELECTION_FILE
    cache = _read(path)
    means: dict[str, float] = {}
    for cand in cands:
        ident = {"method_config": config_to_dict(method_config(label, spec, cand)), "protocol": protocol,
                 "source": run.source_identity(model_kind(label, spec)), "heldout": list(run.bench.heldout),
                 "severity": run.bench.heldout_severity, "per_class": run.cfg.data.heldout_per_class,
                 "batch_size": run.bench.batch_size, "order": spec.order, "params": run.cfg.eval.params}
        key = hashlib.sha256(canonical_json(ident).encode()).hexdigest()
        if key not in cache:
            method, _ = run.method(label, cand, protocol)
            domains = [run.domain(c, run.bench.heldout_severity, run.cfg.seed, heldout=True) for c in run.bench.heldout]
            res = evaluate(method, domains, run.protocol(label, protocol, run.cfg.seed), device=run.device)
            cache = _read(path)  # another shard may have written meanwhile
            cache[key] = res.mean_accuracy
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, json.dumps(cache, indent=1, sort_keys=True).encode())
            if run.log:
                run.log(f"[select] {label} ({protocol}) {canonical_json(cand)}: mean {res.mean_accuracy:.2f}% on "
                        f"held-out {', '.join(run.bench.heldout)} ({res.wall_s:.0f}s)")
        means[canonical_json(cand)] = float(cache[key])
    best = max(range(len(cands)), key=lambda i: (means[canonical_json(cands[i])], -i))
    chosen = cands[best]
    record = {"on": list(run.bench.heldout), "severity": run.bench.heldout_severity,
              "per_class": run.cfg.data.heldout_per_class, "means": means, "chosen": chosen,
              "mean_accuracy": means[canonical_json(chosen)]}
    if run.log:
        run.log(f"[select] {label} ({protocol}): chose {canonical_json(chosen)} "
                f"(held-out mean {record['mean_accuracy']:.2f}%)")
    return chosen, record


def _read(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a selection cache ({exc}); delete it to measure again") from exc

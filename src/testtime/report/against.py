"""Paired comparison across two stores: each row of this store against the same row of another.

Two stores of the same grid on other source models (say, a supervised model trained 27 epochs and
one trained 18) hold cells with the same label, protocol, dataset, backbone, severity, corruption and
eval seed. When those cells also saw the same test images and corruption draws (their configs agree
on :data:`SAME_STREAM`: the data split, the test subset's size, the order of the stream), the
difference ``here − there`` is paired, as :mod:`testtime.report.paired`'s within one store: the
variation of the test subset and the draws cancels, and what is left is the model's (or whatever
else differs; every other config field that differs is named in a note, e.g.
``source.supervised.epochs: 27.0 here, 18.0 there``, or a held-out choice that picked another lr).

Example::

    other = load_run("runs/cifar10-cpu-v9")
    for p in against(load_run("runs/cifar10-cpu"), other, "runs/cifar10-cpu-v9", labels=["bn"]):
        print(paired_markdown(p))

``testtime report runs/cifar10-cpu --against runs/cifar10-cpu-v9 --against-only bn,cta`` writes the
same into report.md (and ``pair<i>.csv``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from testtime.report.paired import Paired, Side, pair_from, row_accuracies
from testtime.store.db import ResultStore

# config fields (dotted) that fix which images a cell saw, in which order: they must agree to pair
SAME_STREAM = ("source.data", "test_per_class", "corruption_order", "order")
# fields that are the cell's coordinates (equal by construction when two cells are matched)
_COORDINATES = {"label", "protocol", "dataset", "backbone", "severity", "seed", "corruption"}


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in config.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(here: list[dict], there: list[dict]) -> list[str]:
    """``"FIELD: X here, Y there"`` for each config field outside the coordinates on which matched cells
    differ (``"FIELD differs from cell to cell"`` when the values are not the same on every pair)."""
    def text(flat: dict, k: str) -> str:
        return repr(flat[k]) if k in flat else "absent"

    values: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for a, b in zip(here, there):
        fa, fb = _flat(a["config"]), _flat(b["config"])
        for k in set(fa) | set(fb):
            if k.split(".")[0] not in _COORDINATES and (k not in fa or k not in fb or fa[k] != fb[k]):
                values[k].add((text(fa, k), text(fb, k)))
    out = []
    for k in sorted(values):
        v = values[k]
        out.append(f"{k}: {next(iter(v))[0]} here, {next(iter(v))[1]} there" if len(v) == 1
                   else f"{k} differs from cell to cell")
    return out


def against(store: ResultStore, other: ResultStore, other_name: str, labels: list[str] | None = None
            ) -> list[Paired]:
    """``here − there`` for each (label, protocol, dataset, backbone, severity) both stores measured
    (``labels``: only these); a ValueError naming what is missing when nothing can be paired."""
    here_cells, there_cells = store.cells(), other.cells()
    if labels is not None:
        known = {c["label"] for c in here_cells} & {c["label"] for c in there_cells}
        bad = [x for x in labels if x not in known]
        if bad:
            raise ValueError(f"--against-only: {', '.join(map(repr, bad))} not measured in both stores "
                             f"(labels in both: {', '.join(sorted(known)) or 'none'})")

    def groups(cells: list[dict]) -> dict[tuple, list[dict]]:
        g: dict[tuple, list[dict]] = defaultdict(list)
        for c in cells:
            if labels is None or c["label"] in labels:
                g[(c["label"], c["protocol"], c["dataset"], c["backbone"], c["severity"])].append(c)
        return g

    gh, gt = groups(here_cells), groups(there_cells)
    out, why = [], []
    for key in sorted(set(gh) & set(gt), key=lambda k: (k[2], k[3], k[4], k[0], k[1])):
        label, protocol, dataset, backbone, severity = key
        where = f"{label}@{protocol} · {dataset} · {backbone} · severity {severity}"
        acc_h, err_h = row_accuracies(gh[key], f"{label}@{protocol} here")
        acc_t, err_t = row_accuracies(gt[key], f"{label}@{protocol} in {other_name}")
        if err_h or err_t:
            why.append(f"{where}: {err_h or err_t}")
            continue
        by_h = {(c["seed"], c["corruption"]): c for c in gh[key]}
        by_t = {(c["seed"], c["corruption"]): c for c in gt[key]}
        shared = sorted(set(by_h) & set(by_t))
        stream = sorted({f for k in shared for f in SAME_STREAM
                         if _get(by_h[k]["config"], f) != _get(by_t[k]["config"], f)})
        if stream:
            why.append(f"{where}: not the same test images or stream ({', '.join(stream)} differ)")
            continue
        p = pair_from(Side(label, protocol), Side(label, protocol, store=other_name), dataset, backbone, severity,
                  acc_h, acc_t)
        if p is None:
            why.append(f"{where}: no corruption measured by both on a seed")
            continue
        diffs = config_differences([by_h[k] for k in shared], [by_t[k] for k in shared])
        if diffs:
            p.notes.append("the cells' configs differ in " + "; ".join(diffs))
        out.append(p)
    if not out:
        raise ValueError(f"--against {other_name}: no cells to pair" + (f" ({'; '.join(why)})" if why else
                         " (no label measured in both stores under the same protocol, dataset, backbone and "
                         "severity)"))
    for p in out:
        p.notes += [f"not paired: {w}" for w in why]
    return out

"""The summary table of a report: one row per (label, protocol), one table per (dataset, backbone, severity).

A row gathers the cells of one label under one protocol (a label measured there with several sets of
hyperparameters gets one row each, numbered ``label (1)``, ``label (2)``). Its **mean** is each seed's
mean over the row's corruptions, then mean ± sample std over seeds; a seed lacking one of the
corruptions other seeds of the row have is left out (and named in a note). **Δ vs bn** is the row's
mean minus the mean of the label ``bn`` (the same protocol, else bn's only protocol), both over the
seeds the two rows share; ``—`` when there is no such bn row, it has other corruptions, or no seed
is shared. Rows are sorted by mean; the best of the rows on the most corruptions is in bold (a row
measured on fewer, e.g. a grid still running, is not compared with them).

Example::

    for s in build_summaries(store):
        print(summary_markdown(s))
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from testtime.report.tables import (
    DASH,
    _best,
    corruption_order,
    fmt,
    fmt_delta,
    hparams_text,
    lacking_text,
    mean_std,
)
from testtime.store.db import ResultStore, canonical_json

BASELINE = "bn"


@dataclass
class SummaryRow:
    header: str
    label: str
    method: str
    protocol: str
    hparams: dict[str, Any]
    choice: str  # how the hyperparameters were chosen
    corruptions: list[str]
    by_seed: dict[int, float]  # seed (with every corruption) -> mean over the corruptions
    left_out: dict[int, list[str]]  # seed lacking a corruption -> the corruptions it lacks
    images_per_s: list[float]
    delta: float | None = None
    delta_std: float | None = None  # sample std over the common seeds of the per-seed difference (paired)

    @property
    def mean(self) -> float | None:
        return float(np.mean(list(self.by_seed.values()))) if self.by_seed else None


@dataclass
class Summary:
    dataset: str
    backbone: str
    severity: int
    baseline: str
    rows: list[SummaryRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _numeric_order(cands: list[Any]) -> list[int] | None:
    """Indices that list candidates with the same numeric fields by value (field by field, in name
    order); None when they are not all such (then the stored order is kept)."""
    if not cands or not all(isinstance(c, dict) for c in cands):
        return None
    keys = sorted(cands[0])
    numeric = all(sorted(c) == keys and all(_number(c[k]) for k in keys) for c in cands)
    return sorted(range(len(cands)), key=lambda i: tuple(cands[i][k] for k in keys)) if numeric else None


def selection_text(record: dict[str, Any] | None) -> str:
    """``held-out on fog, snow: lr=0.001 of [lr=0.0001: 55.10, lr=0.001: 61.20]``, or ``defaults``; a choice at
    the edge of 3 or more candidates (:func:`edge_params`) ends with ``; lr=0.01 at the edge of its candidates``."""
    if not record:
        return "defaults"
    items = []
    for key, m in (record.get("means") or {}).items():
        try:
            cand = json.loads(key)
            text = hparams_text(cand)
        except (TypeError, ValueError, AttributeError):
            cand, text = None, str(key)
        items.append((cand, f"{text}: {float(m):.2f}"))
    order = _numeric_order([c for c, _ in items])
    if order is not None:  # the stored keys are JSON text (sorted as text: 0.0001 before 1e-05); list by value
        items = [items[i] for i in order]
    cands = [c for c, _ in items if isinstance(c, dict)]
    means = [t for _, t in items]
    on = record.get("on")
    where = f" on {', '.join(map(str, on))}" if on else ""
    chosen = record.get("chosen") or {}
    edge = edge_params(chosen, cands)
    flag = f"; {hparams_text({k: chosen[k] for k in edge})} at the edge of its candidates" if edge else ""
    return f"held-out{where}: {hparams_text(chosen)} of [{', '.join(means)}]{flag}"


def edge_params(chosen: dict[str, Any], candidates: list[dict[str, Any]]) -> list[str]:
    """The numeric hyperparameters of ``chosen`` at the smallest or largest of their 3 or more candidate values.

    A choice at the edge of the candidates was not bracketed: a value beyond it might have done better
    (with 2 candidates every choice is at an edge, so they are not flagged)::

        edge_params({"lr": 1e-2}, [{"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2}])   # ["lr"]
    """
    values: dict[str, set[float]] = defaultdict(set)
    for cand in candidates:
        for k, v in cand.items():
            if _number(v):
                values[k].add(float(v))
    return [k for k, v in sorted(chosen.items())
            if _number(v) and len(values.get(k, ())) >= 3 and float(v) in (min(values[k]), max(values[k]))]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _choice(cells: list[dict]) -> str:
    texts = dict.fromkeys(selection_text((c.get("config") or {}).get("selection")) for c in cells)
    return "; ".join(texts)


def _seed_means(cells: list[dict], corruptions: list[str]) -> tuple[dict[int, float], dict[int, list[str]]]:
    acc: dict[int, dict[str, float]] = defaultdict(dict)
    for c in cells:
        acc[c["seed"]][c["corruption"]] = c["accuracy"]  # the last cell wins, as in the tables
    full = {s: float(np.mean([v[c] for c in corruptions])) for s, v in acc.items() if len(v) == len(corruptions)}
    lacking = {s: [c for c in corruptions if c not in v] for s, v in sorted(acc.items()) if s not in full}
    return dict(sorted(full.items())), lacking


def _row(header: str, cells: list[dict]) -> SummaryRow:
    first = cells[0]
    corruptions = corruption_order(sorted({c["corruption"] for c in cells}))
    by_seed, left_out = _seed_means(cells, corruptions)
    ips = [c["images_per_s"] for c in cells if c.get("images_per_s") is not None]
    return SummaryRow(header, first["label"], first["method"], first["protocol"], first["hparams"], _choice(cells),
                      corruptions, by_seed, left_out, ips)


def _rows(cells: list[dict]) -> list[SummaryRow]:
    """One row per (label, protocol, hyperparameters), in order of first appearance."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["label"], c["protocol"], canonical_json(c["hparams"]))].append(c)
    variants: dict[tuple[str, str], list[str]] = defaultdict(list)
    for label, proto, hp in groups:
        variants[(label, proto)].append(hp)
    rows = []
    for (label, proto, hp), group in groups.items():
        sets = variants[(label, proto)]
        rows.append(_row(label if len(sets) == 1 else f"{label} ({sets.index(hp) + 1})", group))
    return rows


def _baseline_for(row: SummaryRow, rows: list[SummaryRow], baseline: str) -> SummaryRow | str:
    """The baseline row ``row`` is compared with, or why there is none."""
    base = [r for r in rows if r.label == baseline]
    same = [r for r in base if r.protocol == row.protocol]
    if not same and len({r.protocol for r in base}) == 1:
        same = base
    if not same:
        return f"no {baseline} row" + (" under its protocol" if base else "")
    if len(same) > 1:
        return f"{baseline} has several sets of hyperparameters under that protocol"
    if same[0].corruptions != row.corruptions:
        return f"{baseline} has other corruptions ({', '.join(same[0].corruptions)})"
    if not set(row.by_seed) & set(same[0].by_seed):
        return f"no seed with every corruption shared with {baseline}"
    return same[0]


def _set_deltas(s: Summary) -> None:
    for row in s.rows:
        base = _baseline_for(row, s.rows, s.baseline)
        if isinstance(base, str):
            if any(r.label == s.baseline for r in s.rows):
                s.notes.append(f"{row.header} ({row.protocol}): no Δ vs {s.baseline}: {base}")
            continue
        seeds = sorted(set(row.by_seed) & set(base.by_seed))
        if row is not base and len(seeds) < len(row.by_seed):
            shared, own = ", ".join(map(str, seeds)), ", ".join(map(str, row.by_seed))
            s.notes.append(f"{row.header} ({row.protocol}): Δ vs {s.baseline} over seed(s) {shared} only, "
                           f"the mean over {own}")
        diffs = [row.by_seed[k] - base.by_seed[k] for k in seeds]  # paired: the same test images and draws
        row.delta = float(np.mean(diffs))
        row.delta_std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None


def _notes(s: Summary) -> None:
    for r in s.rows:
        if r.left_out:
            s.notes.append(f"{r.header} ({r.protocol}): {lacking_text(r.left_out)} (left out of the mean)")
    if len({tuple(r.corruptions) for r in s.rows}) > 1:
        s.notes.append("the rows do not all have the same corruptions (see the corruptions column): "
                       "their means are over different corruptions")
    if not any(r.label == s.baseline for r in s.rows):
        s.notes.append(f"no {s.baseline!r} row at this severity: no Δ")


def build_summaries(store: ResultStore, baseline: str = BASELINE) -> list[Summary]:
    """The store's cells as summary tables, one per (dataset, backbone, severity)."""
    if not isinstance(baseline, str) or not baseline:
        raise ValueError(f"baseline must be a non-empty label, got {baseline!r}")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in store.cells():
        groups[(c["dataset"], c["backbone"], c["severity"])].append(c)
    out = []
    for (dataset, backbone, severity), cells in groups.items():
        s = Summary(dataset, backbone, severity, baseline, _rows(cells))
        _set_deltas(s)
        _notes(s)
        s.rows.sort(key=lambda r: (r.mean is None, -(r.mean or 0.0)))
        out.append(s)
    return out


HEAD = ["label", "method", "protocol", "hyperparameters", "chosen by", "corruptions", "seeds",
        "mean ± std over seeds", "Δ vs {}", "images / s"]


def _cells(r: SummaryRow) -> list[str]:
    ips = f"{np.mean(r.images_per_s):.4g}" if r.images_per_s else DASH
    return [r.header, r.method, r.protocol, hparams_text(r.hparams), r.choice, str(len(r.corruptions)),
            str(len(r.by_seed)), fmt(list(r.by_seed.values())), _delta_text(r), ips]


def _delta_text(r: SummaryRow) -> str:
    return fmt_delta(r.delta) + (f" ± {r.delta_std:.2f}" if r.delta_std is not None else "")


def summary_markdown(s: Summary) -> str:
    """The summary as Markdown: a heading, what the columns mean, the table, notes."""
    lines = [f"### Summary: {s.dataset} · {s.backbone} · severity {s.severity}", "",
             "Mean: each seed's mean over the row's corruptions, then mean ± sample std over seeds. "
             f"Δ vs {s.baseline}: the row's mean minus {s.baseline}'s (same protocol, else {s.baseline}'s only "
             "protocol), over the seeds both have; ± the sample std over those seeds of the per-seed "
             "difference (paired: both rows saw the same images and corruption draws).", "",
             "| " + " | ".join(HEAD).format(s.baseline) + " |", "|---" * 5 + "|---:" * 5 + "|"]
    widest = max((len(r.corruptions) for r in s.rows), default=0)  # a row on fewer corruptions is not bolded
    best = _best([r.mean if len(r.corruptions) == widest else None for r in s.rows])
    for i, r in enumerate(s.rows):
        cells = _cells(r)
        if i in best:
            cells[7] = f"**{cells[7]}**"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if s.notes:
        lines += ["", *[f"Note: {n}" for n in s.notes]]
    return "\n".join(lines) + "\n"


def summary_csv(s: Summary) -> str:
    """One line per row: mean and sample std over seeds (std empty for one seed), Δ and images/s unrounded."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "method", "protocol", "hparams", "chosen_by", "n_corruptions", "n_seeds", "mean", "std",
                f"delta_vs_{s.baseline}", f"delta_vs_{s.baseline}_std", "images_per_s"])
    for r in s.rows:
        m, sd = mean_std(list(r.by_seed.values())) if r.by_seed else (None, None)
        w.writerow([r.header, r.method, r.protocol, hparams_text(r.hparams), r.choice, len(r.corruptions),
                    len(r.by_seed), _num(m), _num(sd), _num(r.delta), _num(r.delta_std),
                    _num(float(np.mean(r.images_per_s)) if r.images_per_s else None)])
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"

"""Tables in the CTA paper's shape (Tables 2, 4, 5): corruptions as rows, methods as columns.

One table per (dataset, backbone, protocol, severity) found in a results store. A column is a
``label`` (the row name of ``testtime cta`` / ``testtime bench``) with one set of hyperparameters;
a label measured with several sets gets one column each, numbered ``label (1)``, ``label (2)``.
A cell shows the mean over seeds and, with two seeds or more, ``± the sample standard deviation``
(ddof = 1). The **Mean** row averages each seed's mean over the table's corruptions (so only seeds
with every corruption count; ``—`` when none has); the **Δ (ours − other)** row is the reference
column's Mean minus each other column's Mean (the paper's ``Δ(Ours − Other)``). The best mean of
each row is in bold, as in the paper. Above each table: dataset, backbone, protocol, seeds and each
column's method and hyperparameters.

Example::

    tables = build_tables(store, reference="cta")
    print(to_markdown(tables[0]))
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from testtime.data.names import CORRUPTIONS_ALL
from testtime.store.db import COST, ResultStore, canonical_json

DASH = "—"


@dataclass(frozen=True)
class Column:
    header: str
    label: str
    method: str
    hparams: dict[str, Any]


@dataclass
class Table:
    dataset: str
    backbone: str
    protocol: str
    severity: int
    reference: str | None
    columns: list[Column] = field(default_factory=list)
    corruptions: list[str] = field(default_factory=list)
    # (column index, corruption) -> {seed: accuracy}
    acc: dict[tuple[int, str], dict[int, float]] = field(default_factory=dict)
    cost: dict[tuple[int, str], list[float]] = field(default_factory=dict)  # (column, cost field) -> values
    notes: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for v in self.acc.values() for s in v})

    def cell(self, col: int, corruption: str) -> list[float]:
        return list(self.acc.get((col, corruption), {}).values())

    def mean_by_seed(self, col: int) -> list[float]:
        """Per seed with every corruption: the mean accuracy over the table's corruptions."""
        out = []
        for s in self.seeds:
            vals = [self.acc.get((col, c), {}).get(s) for c in self.corruptions]
            if all(v is not None for v in vals):
                out.append(float(np.mean(vals)))
        return out

    def mean(self, col: int) -> float | None:
        vals = self.mean_by_seed(col)
        return float(np.mean(vals)) if vals else None

    def delta(self, col: int) -> float | None:
        """Reference column's mean minus this column's mean (None for the reference itself)."""
        ref = self.reference_index()
        if ref is None or ref == col:
            return None
        a, b = self.mean(ref), self.mean(col)
        return None if a is None or b is None else a - b

    def reference_index(self) -> int | None:
        for i, c in enumerate(self.columns):
            if c.header == self.reference:
                return i
        return None


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for one value)."""
    m = float(np.mean(values))
    return m, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def fmt(values: list[float]) -> str:
    if not values:
        return DASH
    m, s = mean_std(values)
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def fmt_delta(d: float | None) -> str:
    """A signed difference to 2 decimals; one that rounds to zero prints ``+0.00``, never ``-0.00``."""
    if d is None:
        return DASH
    return "+0.00" if round(d, 2) == 0 else f"{d:+.2f}"


def corruption_order(names: list[str]) -> list[str]:
    """The benchmark's order (the 15, then the held-out 4), then any other name alphabetically."""
    known = [c for c in CORRUPTIONS_ALL if c in names]
    return known + sorted(set(names) - set(known))


def build_tables(store: ResultStore, reference: str | None = "cta") -> list[Table]:
    """The store's cells as tables, one per (dataset, backbone, protocol, severity)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in store.cells():
        groups[(r["dataset"], r["backbone"], r["protocol"], r["severity"])].append(r)
    tables = []
    for (dataset, backbone, protocol, severity), rows in groups.items():
        t = Table(dataset, backbone, protocol, severity, reference)
        t.corruptions = corruption_order(sorted({r["corruption"] for r in rows}))
        col_of: dict[tuple[str, str], int] = {}
        devices: dict[int, Counter] = defaultdict(Counter)  # column -> where its cells were measured (None: unknown)
        variants: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            key = (r["label"], canonical_json(r["hparams"]))
            if key not in col_of:
                col_of[key] = len(t.columns)
                variants[r["label"]].append(key[1])
                t.columns.append(Column(r["label"], r["label"], r["method"], r["hparams"]))
            ci = col_of[key]
            seeds = t.acc.setdefault((ci, r["corruption"]), {})
            if r["seed"] in seeds:
                t.notes.append(f"{r['label']} {r['corruption']} seed {r['seed']}: several cells (configs differ "
                               "beyond the table's columns); the last one is shown")
            seeds[r["seed"]] = r["accuracy"]
            for k in COST:
                if r[k] is not None:
                    t.cost.setdefault((ci, k), []).append(r[k])
            devices[ci][r.get("device")] += 1
        for (label, hp), ci in col_of.items():
            if len(variants[label]) > 1:
                c = t.columns[ci]
                t.columns[ci] = Column(f"{label} ({variants[label].index(hp) + 1})", label, c.method, c.hparams)
        for ci in range(len(t.columns)):
            missing = [c for c in t.corruptions if (ci, c) not in t.acc]
            if missing:
                t.notes.append(f"{t.columns[ci].header}: no result for {', '.join(missing)} (Mean left out)")
                continue
            lacking = {s: [c for c in t.corruptions if s not in t.acc[(ci, c)]] for s in t.seeds}
            partial = {s: m for s, m in lacking.items() if m and len(m) < len(t.corruptions)}
            if partial:
                t.notes.append(f"{t.columns[ci].header}: {lacking_text(partial)} (left out of Mean)")
        t.notes += device_notes(t, devices)
        if reference and t.reference_index() is None:
            several = [c.header for c in t.columns if c.label == reference]
            if several:  # the label is here, with one column per set of hyperparameters
                t.notes.append(f"reference {reference!r} has several columns in this table ({', '.join(several)}), "
                               "one per set of hyperparameters: no Δ row")
            else:
                t.notes.append(f"reference column {reference!r} is not in this table: no Δ row")
        tables.append(t)
    return tables


def lacking_text(lacking: Mapping[int, list[str]]) -> str:
    """What each incomplete seed lacks, for a note: ``seed 0 lacks pixelate, jpeg_compression; seed 2 lacks fog``."""
    return "; ".join(f"seed {s} lacks {', '.join(m)}" for s, m in sorted(lacking.items()))


def device_notes(t: Table, devices: Mapping[int, Counter]) -> list[str]:
    """Where the cells of a table measured on more than one device came from: a note per column with a
    recorded device (cells stored before the store kept it count as "not recorded")."""
    if len({d for c in devices.values() for d in c}) < 2:
        return []
    out = []
    for ci, count in sorted(devices.items()):
        if any(d is not None for d in count):
            where = ", ".join(f"{d or 'not recorded'} ({n} cells)" for d, n in count.most_common())
            out.append(f"{t.columns[ci].header}: measured on {where}")
    return out


def protocol_name(protocol: str) -> str:
    """A protocol's name for a title: a grid's ``reset-per-domain`` as it is; ``episodic`` of an imported
    ``protocol=episodic, reset=batch, ...`` line (its whole text stays in the lines above the table)."""
    first = protocol.split(",", 1)[0].strip()
    return first.partition("=")[2].strip() if first.startswith("protocol=") else first


def table_title(t: Table) -> str:
    return f"{t.dataset} · {t.backbone} · {protocol_name(t.protocol)} · severity {t.severity}"


def hparams_text(hp: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hp.items())) or "defaults"


def _rows(t: Table) -> list[tuple[str, list[str], list[float | None]]]:
    """(row name, formatted cells, means used for bolding) for the corruption and Mean rows."""
    out = []
    for c in t.corruptions:
        vals = [t.cell(i, c) for i in range(len(t.columns))]
        out.append((c, [fmt(v) for v in vals], [float(np.mean(v)) if v else None for v in vals]))
    by_seed = [t.mean_by_seed(i) for i in range(len(t.columns))]
    out.append(("Mean", [fmt(v) for v in by_seed], [t.mean(i) for i in range(len(t.columns))]))
    return out


def _best(means: list[float | None]) -> set[int]:
    vals = [m for m in means if m is not None]
    if len(vals) < 2:
        return set()
    top = max(vals)
    return {i for i, m in enumerate(means) if m is not None and math.isclose(m, top, abs_tol=1e-9)}


def header_lines(t: Table) -> list[str]:
    seeds = ", ".join(str(s) for s in t.seeds)
    lines = [f"- dataset: {t.dataset}", f"- backbone: {t.backbone}", f"- protocol: {t.protocol}",
             f"- severity: {t.severity}",
             f"- seeds: {seeds} ({'mean ± sample std over seeds' if len(t.seeds) > 1 else 'one seed'})",
             "- hyperparameters:"]
    lines += [f"  - `{c.header}` ({c.method}): {hparams_text(c.hparams)}" for c in t.columns]
    return lines


def to_markdown(t: Table) -> str:
    """The table as Markdown, with its settings above it and notes below."""
    lines = [f"### {table_title(t)}", "", *header_lines(t), ""]
    lines.append("| corruption | " + " | ".join(c.header for c in t.columns) + " |")
    lines.append("|---|" + "---:|" * len(t.columns))
    for name, cells, means in _rows(t):
        best = _best(means)
        cells = [f"**{x}**" if i in best else x for i, x in enumerate(cells)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if t.reference_index() is not None:
        deltas = [fmt_delta(t.delta(i)) for i in range(len(t.columns))]
        lines.append(f"| Δ ({t.reference} − other) | " + " | ".join(deltas) + " |")
    if t.notes:
        lines += ["", *[f"Note: {n}" for n in t.notes]]
    cost = cost_markdown(t)
    if cost:
        lines += ["", cost]
    return "\n".join(lines) + "\n"


COST_ROWS = {"wall_s": "wall time per cell (s)", "images_per_s": "images / s", "peak_mem_mb": "peak memory (MB)",
             "forward_per_image": "forward passes / image", "backward_per_image": "backward passes / image"}


def cost_markdown(t: Table) -> str:
    """Cost per column (mean over the column's cells), rows with no measurement left out."""
    present = [k for k in COST if any((i, k) in t.cost for i in range(len(t.columns)))]
    if not present:
        return ""
    lines = ["Cost (mean over cells):", "", "| cost | " + " | ".join(c.header for c in t.columns) + " |",
             "|---|" + "---:|" * len(t.columns)]
    for k in present:
        vals = [t.cost.get((i, k)) for i in range(len(t.columns))]
        lines.append(f"| {COST_ROWS[k]} | " + " | ".join(f"{np.mean(v):.4g}" if v else DASH for v in vals) + " |")
    return "\n".join(lines)


def to_csv(t: Table) -> str:
    """Corruptions, Mean and Δ as rows; per column its mean, sample std (empty for one seed) and n."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["corruption"]
    for c in t.columns:
        head += [c.header, f"{c.header} std", f"{c.header} n"]
    w.writerow(head)
    series = [(c, [t.cell(i, c) for i in range(len(t.columns))]) for c in t.corruptions]
    series.append(("Mean", [t.mean_by_seed(i) for i in range(len(t.columns))]))
    for name, vals in series:
        row: list[Any] = [name]
        for v in vals:
            if v:
                m, s = mean_std(v)
                row += [f"{m:.4f}", "" if s is None else f"{s:.4f}", len(v)]
            else:
                row += ["", "", 0]
        w.writerow(row)
    if t.reference_index() is not None:
        row = [f"delta ({t.reference} - other)"]
        for i in range(len(t.columns)):
            d = t.delta(i)
            row += ["" if d is None else f"{d:.4f}", "", ""]
        w.writerow(row)
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "±": r"$\pm$", "—": "---", "−": "$-$", "Δ": r"$\Delta$"}


def _tex(s: str) -> str:
    """Escape LaTeX specials in one pass (so an inserted backslash is never escaped again)."""
    return re.sub("|".join(re.escape(k) for k in _TEX), lambda m: _TEX[m.group(0)], s)


def _tex_name(name: str) -> str:
    """``jpeg_compression`` -> ``JPEG Compression``; ``Mean`` -> ``Average`` (the paper's words)."""
    if name == "Mean":
        return "Average"
    return name.replace("_", " ").title().replace("Jpeg", "JPEG")


def to_latex(t: Table) -> str:
    """A booktabs ``table`` with the settings in the caption (needs ``\\usepackage{booktabs}``)."""
    cols = len(t.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * cols + "}", r"\toprule",
             "Corruption & " + " & ".join(_tex(c.header) for c in t.columns) + r" \\", r"\midrule"]
    rows = _rows(t)
    for k, (name, cells, means) in enumerate(rows):
        if k == len(rows) - 1:
            lines.append(r"\midrule")
        best = _best(means)
        cells = [rf"\textbf{{{_tex(x)}}}" if i in best else _tex(x) for i, x in enumerate(cells)]
        lines.append(_tex(_tex_name(name)) + " & "
                     + " & ".join(cells) + r" \\")
    if t.reference_index() is not None:
        deltas = [_tex(fmt_delta(t.delta(i)).replace("-", "−", 1)) for i in range(cols)]  # a minus sign
        lines.append(rf"$\Delta$({_tex(t.reference or '')} $-$ other) & " + " & ".join(deltas) + r" \\")
    hp = "; ".join(f"{_tex(c.header)}: {_tex(hparams_text(c.hparams))}" for c in t.columns)
    caption = (f"Accuracy (\\%) on {_tex(t.dataset)}, severity {t.severity}, {_tex(t.backbone)}. "
               f"Protocol: {_tex(t.protocol)}. Seeds: {', '.join(map(str, t.seeds))}. Hyperparameters: {hp}.")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"

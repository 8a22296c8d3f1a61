"""Plots of a results store (matplotlib, PNG and SVG).

- :func:`plot_accuracy`: per-corruption accuracy per method of one table (bars, ± std over seeds);
- :func:`plot_curves`: accuracy against test-time iterations, the CTA paper's Fig. 3 (one panel per
  hyperparameter set, one line per corruption, the mean in black);
- :func:`plot_severity`: mean accuracy over corruptions against severity 1..5 per method.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global state; saved through
the Agg canvas), so they work headless and do not change the caller's backend. Each function
writes ``<stem>.png`` and ``<stem>.svg`` and returns both paths. Needs the ``report`` extra.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from testtime.report.tables import Table, corruption_order, hparams_text, mean_std, table_title
from testtime.store.db import canonical_json


def _figure(width: float, height: float, ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'testtime[report]'") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(out[0], dpi=150)
    fig.savefig(out[1])
    return out


def _short(name: str) -> str:
    for s in ("_noise", "_blur", "_transform", "_compression"):
        name = name.replace(s, "")
    return name


def plot_accuracy(table: Table, stem: str | Path) -> list[Path]:
    """Grouped bars: x = the table's corruptions and their mean, one bar per column."""
    names = [*table.corruptions, "mean"]
    ncol = len(table.columns)
    fig, (ax,) = _figure(max(6.0, 0.45 * len(names) * max(ncol, 2) / 2 + 2), 4.0)
    width = 0.8 / max(ncol, 1)
    x = np.arange(len(names))
    for i, col in enumerate(table.columns):
        series = [table.cell(i, c) for c in table.corruptions] + [table.mean_by_seed(i)]
        means = [mean_std(v)[0] if v else np.nan for v in series]
        errs = [(mean_std(v)[1] or 0.0) if v else 0.0 for v in series]
        ax.bar(x + (i - (ncol - 1) / 2) * width, means, width, yerr=errs, label=col.header, capsize=2)
    ax.set_xticks(x, [_short(n) for n in names], rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(table_title(table), fontsize=10)
    ax.legend(fontsize=7, ncols=min(ncol, 4), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(stem))


def plot_curves(curves: Sequence[dict[str, Any]], stem: str | Path, title: str = "") -> list[Path]:
    """Accuracy after 0..K iterations (Fig. 3): a panel per hyperparameter set, a line per corruption.

    ``curves``: rows of :meth:`ResultStore.curves` (one label, dataset, backbone, protocol and
    severity); several seeds of a corruption are averaged.
    """
    if not curves:
        raise ValueError("curves: nothing to plot")
    panels: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    hp_of: dict[str, dict] = {}
    for r in curves:
        k = canonical_json(r["hparams"])
        hp_of[k] = r["hparams"]
        panels[k][r["corruption"]].append(r["accuracies"])
    fig, axes = _figure(4.2 * len(panels), 3.6, ncols=len(panels))
    for ax, (k, by_corr) in zip(axes, panels.items()):
        means = []
        for c in corruption_order(list(by_corr)):
            length = min(len(a) for a in by_corr[c])
            y = np.mean([a[:length] for a in by_corr[c]], axis=0)  # (K + 1,) over seeds
            means.append(y)
            ax.plot(np.arange(length), y, lw=1, alpha=0.8, label=_short(c))
        length = min(len(m) for m in means)
        ax.plot(np.arange(length), np.mean([m[:length] for m in means], axis=0), color="black", lw=2.5, label="mean")
        ax.set_title(hparams_text(hp_of[k]), fontsize=8)
        ax.set_xlabel("test-time iterations")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=6, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(stem))


def severity_series(tables: Sequence[Table]) -> dict[str, dict[int, list[float]]]:
    """Legend name -> severity -> per-seed means over corruptions, across tables of one setting.

    A series is a label with one set of hyperparameters (the same column in every table); a label
    with several sets is named ``label [hyperparameters]``.
    """
    series: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(dict)
    hps: dict[tuple[str, str], dict] = {}
    for t in tables:
        for i, col in enumerate(t.columns):
            vals = t.mean_by_seed(i)
            if vals:
                key = (col.label, canonical_json(col.hparams))
                hps[key] = col.hparams
                series[key][t.severity] = vals
    labels = [k[0] for k in series]
    return {(lab if labels.count(lab) == 1 else f"{lab} [{hparams_text(hps[(lab, hp)])}]"): v
            for (lab, hp), v in series.items()}


def plot_severity(tables: Sequence[Table], stem: str | Path) -> list[Path]:
    """Mean accuracy over corruptions (± std over seeds) against severity, a line per column.

    ``tables``: tables of one dataset, backbone and protocol at different severities.
    """
    series = severity_series(tables)
    if len({t.severity for t in tables}) < 2:
        raise ValueError("severity plot: needs tables at two severities or more")
    fig, (ax,) = _figure(6.0, 4.0)
    for header, by_sev in series.items():
        sev = sorted(by_sev)
        ms = [mean_std(by_sev[s]) for s in sev]
        ax.errorbar(sev, [m for m, _ in ms], yerr=[s or 0.0 for _, s in ms], marker="o", capsize=2, label=header)
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.set_xlabel("severity")
    ax.set_ylabel("mean accuracy over corruptions (%)")
    t = tables[0]
    ax.set_title(f"{t.dataset} · {t.backbone}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, Path(stem))

"""Write the report of a run directory: Markdown, CSV (and LaTeX) tables and plots.

:func:`load_run` reads a run directory without changing it: an in-memory copy of its
``results.sqlite`` (checked for the schema version), plus the cells of its ``results.json`` and
``bench-*.json`` that the store does not hold. :func:`write_report` writes into ``out_dir``:

- ``report.md``: the source models' clean accuracy first when the store has model rows
  (:mod:`testtime.report.models`), then the summary tables (:mod:`testtime.report.summary`), then
  every table (settings above it) and the plots;
- ``models.csv`` when the store has model rows;
- ``summary<i>.csv`` per summary table;
- with ``pairs``, a paired comparison ``A − B`` per pair and severity (:mod:`testtime.report.paired`)
  after the summaries, and ``pair<i>.csv`` for each; then the comparisons given ready-made in
  ``compared`` (e.g. :func:`testtime.report.against.against`: each row against another store's);
- ``table<i>.csv`` (and ``table<i>.tex`` with ``latex=True``) per table;
- ``accuracy-table<i>.{png,svg}`` per table, ``iterations-<i>.{png,svg}`` per curve setting,
  ``severity-<i>.{png,svg}`` per setting measured at several severities.

Example::

    store = load_run("runs/cifar10-cpu")
    write_report(store, "runs/cifar10-cpu/report", reference="cta", latex=True)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from testtime.report.models import models_csv, models_markdown
from testtime.report.paired import Paired, Side, paired, paired_csv, paired_markdown
from testtime.report.summary import build_summaries, summary_csv, summary_markdown
from testtime.report.tables import build_tables, protocol_name, to_csv, to_latex, to_markdown
from testtime.store.db import STORE_NAME, ResultStore
from testtime.store.importer import import_results_json, result_files


def load_run(run_dir: str | Path) -> ResultStore:
    """An in-memory store of everything a run directory holds (the directory is only read)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run dir {run_dir}: no such directory")
    if not run_dir.is_dir():
        raise ValueError(f"run dir {run_dir}: not a directory")
    db = run_dir / STORE_NAME
    files = result_files(run_dir)
    if not db.is_file() and not files:
        raise ValueError(f"run dir {run_dir}: no {STORE_NAME}, results.json or bench-*.json in it")
    store = ResultStore.copy_to_memory(db) if db.is_file() else ResultStore.memory()
    for f in files:
        import_results_json(f, store, replace=False)  # the store's own rows win
    if store.count() == 0 and store.count("curves") == 0:
        raise ValueError(f"run dir {run_dir}: the results hold no cells")
    return store


def write_report(store: ResultStore, out_dir: str | Path, *, reference: str | None = "cta", latex: bool = False,
                 plots: bool = True, title: str = "Results", pairs: list[tuple[Side, Side]] = (),
                 compared: list[Paired] = ()) -> list[Path]:
    """Write the tables (and plots) of ``store`` into ``out_dir``; returns the files written.

    ``pairs``: (A, B) sides to compare paired; a ValueError (before anything is written) when a pair has
    no cells in common.
    """
    comparisons = [p for a, b in pairs for p in paired(store, a, b)] + list(compared)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = build_tables(store, reference=reference)
    written: list[Path] = []
    md = [f"# {title}", "", *_models(store, out_dir, written), *_summaries(store, out_dir, written),
          *_pairs(comparisons, out_dir, written)]
    if plots:
        from testtime.report import plots as P
    for i, t in enumerate(tables):
        md.append(to_markdown(t))
        csv_path = out_dir / f"table{i}.csv"
        csv_path.write_text(to_csv(t))
        written.append(csv_path)
        md.append(f"CSV: [{csv_path.name}]({csv_path.name})")
        if latex:
            tex = out_dir / f"table{i}.tex"
            tex.write_text(to_latex(t))
            written.append(tex)
            md[-1] += f", LaTeX: [{tex.name}]({tex.name})"
        if plots and t.columns:
            files = P.plot_accuracy(t, out_dir / f"accuracy-table{i}")
            written += files
            md += ["", f"![accuracy per corruption]({files[0].name})"]
        md.append("")
    if plots:
        md += _curve_plots(store, out_dir, written, P)
        md += _severity_plots(tables, out_dir, written, P)
    report = out_dir / "report.md"
    report.write_text("\n".join(md).rstrip() + "\n")
    return [report, *written]


def _models(store: ResultStore, out_dir: Path, written: list[Path]) -> list[str]:
    rows = store.models()
    if not rows:
        return []
    path = out_dir / "models.csv"
    path.write_text(models_csv(rows))
    written.append(path)
    return [models_markdown(rows), f"CSV: [{path.name}]({path.name})", ""]


def _summaries(store: ResultStore, out_dir: Path, written: list[Path]) -> list[str]:
    md = []
    for i, s in enumerate(build_summaries(store)):
        path = out_dir / f"summary{i}.csv"
        path.write_text(summary_csv(s))
        written.append(path)
        md += [summary_markdown(s), f"CSV: [{path.name}]({path.name})", ""]
    return md


def _pairs(comparisons: list, out_dir: Path, written: list[Path]) -> list[str]:
    md = []
    for i, p in enumerate(comparisons):
        path = out_dir / f"pair{i}.csv"
        path.write_text(paired_csv(p))
        written.append(path)
        md += [paired_markdown(p), f"CSV: [{path.name}]({path.name})", ""]
    return md


def _curve_plots(store: ResultStore, out_dir: Path, written: list[Path], P) -> list[str]:
    groups = defaultdict(list)
    for r in store.curves():
        groups[(r["label"], r["dataset"], r["backbone"], r["protocol"], r["severity"])].append(r)
    md = []
    for i, ((label, dataset, backbone, protocol, severity), rows) in enumerate(groups.items()):
        corrs = sorted({r["corruption"] for r in rows})
        title = f"{label}: accuracy vs iterations\n{dataset} · {backbone} · severity {severity}"
        files = P.plot_curves(rows, out_dir / f"iterations-{i}", title=title)
        written += files
        md += [f"### Accuracy against test-time iterations: {label} (Fig. 3)", "",
               f"- corruptions: {', '.join(corrs)}", f"- protocol: {protocol}", "", f"![iterations]({files[0].name})",
               ""]
    return md


def _severity_plots(tables, out_dir: Path, written: list[Path], P) -> list[str]:
    by_setting = defaultdict(list)
    for t in tables:
        by_setting[(t.dataset, t.backbone, t.protocol)].append(t)
    md = []
    k = 0
    for (_, _, protocol), ts in by_setting.items():
        if len({t.severity for t in ts}) < 2:
            continue
        files = P.plot_severity(sorted(ts, key=lambda t: t.severity), out_dir / f"severity-{k}")
        k += 1
        written += files
        md += [f"### Accuracy against severity: {ts[0].dataset} · {ts[0].backbone} · {protocol_name(protocol)}", "",
               f"- protocol: {protocol}", "", f"![severity]({files[0].name})", ""]
    return md

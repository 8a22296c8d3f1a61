"""Paired comparison of two rows of a store: ``A − B`` on the cells both measured.

Two rows of the grid saw the same test images and the same corruption draws when they share a
(dataset, backbone, severity, seed, corruption), so their difference is paired: the variation of the
test subset and the draws cancels, and what is left is the methods'. This is what a reader needs to
say "A beats B" (or cannot): the mean difference, its sample std over seeds, and on how many
corruptions A is above.

A side is ``LABEL`` or ``LABEL@PROTOCOL``. Without ``@``, A's protocol is its only one at that
severity (several: name one); B's is A's when B has it, else B's only one. Each (dataset, backbone,
severity) where both sides have cells gives one :class:`Paired`:

- ``diffs``: A − B per (seed, corruption), over the seeds where both measured the most corruptions
  (a partial seed is left out) and the corruptions both measured on every one of them (the others are
  named in a note);
- ``by_seed``: per seed, the mean of A − B over the common corruptions;
- ``by_corruption``: per common corruption, A − B averaged over those seeds;
- ``above``/``below``/``ties``: common corruptions whose mean difference is > 0, < 0, or 0 (to 1e-9);
- ``sign_p``: two-sided exact sign test over the untied corruptions (binomial, p = 1/2); corruptions
  of one stream are not independent draws, so read it as a description of the count, not a test of
  a population.

Example::

    for p in paired(store, "cotta-mt1", "cotta-paper"):
        print(paired_markdown(p))

``testtime report RUN_DIR --pair cotta-mt1,cotta-paper --pair tent@continual,bn`` writes the same
into report.md (and ``pair<i>.csv``).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from testtime.report.tables import corruption_order, fmt_delta
from testtime.store.db import ResultStore, canonical_json

TIE = 1e-9


@dataclass(frozen=True)
class Side:
    """One side of a pair: a label, and a protocol or ``None`` (resolved per severity)."""

    label: str
    protocol: str | None = None
    store: str | None = None  # another store's name (testtime.report.against); None: the report's own

    @property
    def text(self) -> str:
        text = self.label if self.protocol is None else f"{self.label}@{self.protocol}"
        return text if self.store is None else f"{text} (in {self.store})"


def parse_side(text: str) -> Side:
    """``LABEL`` or ``LABEL@PROTOCOL``; ValueError naming the form otherwise."""
    label, at, proto = str(text).strip().partition("@")
    if not label.strip() or (at and not proto.strip()) or "@" in proto or "," in text:
        raise ValueError(f"--pair: {text!r} is not LABEL or LABEL@PROTOCOL (e.g. tent or tent@continual)")
    return Side(label.strip(), proto.strip() if at else None)


def parse_pair(text: str) -> tuple[Side, Side]:
    """``"A,B"`` with each side ``LABEL`` or ``LABEL@PROTOCOL``; ValueError naming the form otherwise."""
    parts = str(text).split(",")
    if len(parts) != 2:
        raise ValueError(f"--pair: expected A,B (each LABEL or LABEL@PROTOCOL, e.g. cotta-mt1,cotta-paper), "
                         f"got {text!r}")
    return parse_side(parts[0]), parse_side(parts[1])


@dataclass
class Paired:
    a: Side  # resolved: protocol set
    b: Side
    dataset: str
    backbone: str
    severity: int
    corruptions: list[str]
    diffs: dict[tuple[int, str], float]  # (seed, corruption) -> A − B, every paired seed × common corruption
    notes: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for s, _ in self.diffs})

    @property
    def by_seed(self) -> dict[int, float]:
        return {s: float(np.mean([self.diffs[(s, c)] for c in self.corruptions])) for s in self.seeds}

    @property
    def by_corruption(self) -> dict[str, float]:
        return {c: float(np.mean([self.diffs[(s, c)] for s in self.seeds])) for c in self.corruptions}

    @property
    def mean(self) -> float | None:
        return float(np.mean(list(self.by_seed.values()))) if self.by_seed else None

    @property
    def std(self) -> float | None:
        return float(np.std(list(self.by_seed.values()), ddof=1)) if len(self.by_seed) > 1 else None

    @property
    def above(self) -> int:
        return sum(d > TIE for d in self.by_corruption.values())

    @property
    def below(self) -> int:
        return sum(d < -TIE for d in self.by_corruption.values())

    @property
    def ties(self) -> int:
        return len(self.by_corruption) - self.above - self.below

    @property
    def sign_p(self) -> float | None:
        n, k = self.above + self.below, min(self.above, self.below)
        if n == 0:
            return None
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def _protocol(protocols: set[str], wanted: str | None) -> str | None:
    if wanted is not None:
        return wanted if wanted in protocols else None
    return next(iter(protocols)) if len(protocols) == 1 else None


def row_accuracies(cells: list[dict], where: str) -> tuple[dict[tuple[int, str], float], str | None]:
    """(seed, corruption) -> accuracy of one row's cells, or why they are not one row."""
    sets = {canonical_json(c["hparams"]) for c in cells}
    if len(sets) > 1:
        return {}, f"{where} has {len(sets)} sets of hyperparameters; give each its own label"
    return {(c["seed"], c["corruption"]): c["accuracy"] for c in cells}, None  # the last cell wins, as in tables


def paired(store: ResultStore, a: Side | str, b: Side | str) -> list[Paired]:
    """``a − b`` per (dataset, backbone, severity) where both have cells; ValueError if they never meet."""
    a = a if isinstance(a, Side) else parse_side(a)
    b = b if isinstance(b, Side) else parse_side(b)
    cells = store.cells()  # read once
    labels = {c["label"] for c in cells}
    for side in (a, b):
        if side.label not in labels:
            raise ValueError(f"--pair: no label {side.label!r} in the store (labels: {', '.join(sorted(labels))})")
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c["label"] in (a.label, b.label):
            groups[(c["dataset"], c["backbone"], c["severity"])][c["label"]].append(c)
    out, why = [], []
    for (dataset, backbone, severity), by_label in groups.items():
        where = f"{dataset} · {backbone} · severity {severity}"
        if a.label not in by_label or b.label not in by_label:
            continue
        pa = _protocol({c["protocol"] for c in by_label[a.label]}, a.protocol)
        if pa is None:
            why.append(f"{where}: {a.text} " + ("not measured there" if a.protocol else "has several protocols "
                       f"({', '.join(sorted({c['protocol'] for c in by_label[a.label]}))}); write {a.label}@PROTOCOL"))
            continue
        protos_b = {c["protocol"] for c in by_label[b.label]}
        pb = b.protocol if b.protocol is not None else (pa if pa in protos_b else _protocol(protos_b, None))
        if pb is None or pb not in protos_b:
            why.append(f"{where}: {b.text} " + ("not measured there" if b.protocol else
                       f"lacks {pa} and has several protocols; write {b.label}@PROTOCOL"))
            continue
        acc_a, err_a = row_accuracies([c for c in by_label[a.label] if c["protocol"] == pa], f"{a.label}@{pa}")
        acc_b, err_b = row_accuracies([c for c in by_label[b.label] if c["protocol"] == pb], f"{b.label}@{pb}")
        if err_a or err_b:
            why.append(f"{where}: {err_a or err_b}")
            continue
        p = pair_from(Side(a.label, pa), Side(b.label, pb), dataset, backbone, severity, acc_a, acc_b)
        if p is None:
            why.append(f"{where}: no corruption measured by both on a seed")
            continue
        out.append(p)
    if not out:
        raise ValueError(f"--pair {a.text},{b.text}: no cells to pair" + (f" ({'; '.join(why)})" if why else
                         " (never measured at the same dataset, backbone and severity)"))
    for p in out:  # where both were measured but could not be paired: said, not silently dropped
        p.notes += [f"not paired at {w}" for w in why]
    return sorted(out, key=lambda p: (p.dataset, p.backbone, p.severity))


def pair_from(a: Side, b: Side, dataset: str, backbone: str, severity: int, acc_a: dict, acc_b: dict
              ) -> Paired | None:
    """A − B over the (seed, corruption) accuracies both measured (partial seeds and corruptions left out,
    named in the notes); None when nothing is shared."""
    shared = set(acc_a) & set(acc_b)
    if not shared:
        return None
    per_seed: dict[int, set[str]] = defaultdict(set)
    for seed, corr in shared:
        per_seed[seed].add(corr)
    top = max(len(v) for v in per_seed.values())
    kept = {s: v for s, v in per_seed.items() if len(v) == top}  # a seed with fewer is partial: left out
    common = set.intersection(*kept.values())
    if not common:
        return None
    corruptions = corruption_order(sorted(common))
    notes = []
    if len(kept) < len(per_seed):
        notes.append(f"seed(s) {', '.join(map(str, sorted(set(per_seed) - set(kept))))} left out: fewer corruptions "
                     f"measured by both than seed(s) {', '.join(map(str, sorted(kept)))}")
    dropped = sorted(f"{c} (seed {s})" for s, v in kept.items() for c in v - common)
    if dropped:
        notes.append(f"left out, not measured by both on every paired seed: {', '.join(dropped)}")
    per_seed = kept
    seeds = sorted(per_seed)
    diffs = {(s, c): acc_a[(s, c)] - acc_b[(s, c)] for s in seeds for c in corruptions}
    return Paired(a, b, dataset, backbone, severity, corruptions, diffs, notes)


def _p_text(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def paired_markdown(p: Paired) -> str:
    """A heading, the mean difference with its per-seed values, the counts, the per-corruption table."""
    sd = f" ± {p.std:.2f}" if p.std is not None else ""
    seeds = ", ".join(f"{s}: {fmt_delta(v)}" for s, v in p.by_seed.items())
    lines = [f"### Paired: {p.a.text} − {p.b.text} · {p.dataset} · {p.backbone} · severity {p.severity}", "",
             f"- mean difference: **{fmt_delta(p.mean)}{sd}** (each seed's mean over the {len(p.corruptions)} "
             f"corruptions, then mean ± sample std over {len(p.by_seed)} seed(s); per seed {seeds})",
             f"- {p.a.label} above on {p.above} of {len(p.corruptions)} corruptions, below on {p.below}, tied on "
             f"{p.ties} (two-sided sign test over the untied: p = {_p_text(p.sign_p)})", "",
             "| corruption | Δ (mean over seeds) |", "|---|---:|"]
    lines += [f"| {c} | {fmt_delta(d)} |" for c, d in p.by_corruption.items()]
    lines += [f"| **Mean** | **{fmt_delta(p.mean)}** |"]
    if p.notes:
        lines += ["", *[f"Note: {n}" for n in p.notes]]
    return "\n".join(lines) + "\n"


def paired_csv(p: Paired) -> str:
    """One line per common corruption (the difference per seed and its mean), then one per seed's mean."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    seeds = p.seeds
    w.writerow(["a", "b", "dataset", "backbone", "severity", "corruption", *[f"seed_{s}" for s in seeds], "mean"])
    head = [p.a.text, p.b.text, p.dataset, p.backbone, p.severity]
    for c, d in p.by_corruption.items():
        w.writerow([*head, c, *[f"{p.diffs[(s, c)]:.4f}" for s in seeds], f"{d:.4f}"])
    w.writerow([*head, "mean", *[f"{v:.4f}" for v in p.by_seed.values()], f"{p.mean:.4f}"])
    return buf.getvalue()

"""Evaluation protocols as explicit objects, printed with every result.

A protocol turns a list of test domains (e.g. one per corruption) into a stream of batches, and
says when the method is reset and whether a batch is predicted before or after the update on it.

=================  ===========  =====================================================================
name               reset        stream
=================  ===========  =====================================================================
episodic           every batch  domains in the given order; the CTA / TTT-lineage protocol
reset-per-domain   per domain   domains in the given order; TENT's "reset at every shift"
continual          never        domains in the given order, one after another (CoTTA)
mixed              never        all domains pooled and shuffled, so batches mix corruptions
single-sample      per domain   batch size 1
label-shift        per domain   within a domain, classes arrive non-i.i.d.: Dirichlet(concentration)
=================  ===========  =====================================================================

Every protocol takes ``batch_size``, ``order`` (``"before"`` / ``"after"`` / ``None`` = the method's
own default), ``shuffle`` and ``seed``; all can be overridden: ``get_protocol("continual",
batch_size=64)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from testtime.registry import Registry

Reset = Literal["batch", "domain", "never"]


@dataclass(frozen=True)
class Domain:
    """One test domain: uint8 images (N, H, W, C) and int64 labels (N,)."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"domain {self.name!r}: images must be uint8 (N, H, W, C), got "
                             f"{self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"domain {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")


@dataclass(frozen=True)
class Batch:
    domain: str  # for mixed streams: the domain of each sample is in ``domains``
    index: np.ndarray  # rows of the (pooled) domain arrays
    images: np.ndarray  # (B, H, W, C) uint8
    labels: np.ndarray  # (B,)
    reset_before: bool
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Protocol:
    name: str
    reset: Reset
    batch_size: int = 128
    order: Literal["before", "after"] | None = None
    mixed: bool = False
    dirichlet: float | None = None
    shuffle: bool = True
    seed: int = 0
    fixed_batch_size: int | None = None  # a protocol defined by its batch size (single-sample: 1)

    def __post_init__(self) -> None:
        if self.fixed_batch_size is not None and self.batch_size != self.fixed_batch_size:
            raise ValueError(f"protocol {self.name!r} has batch_size {self.fixed_batch_size} by definition, "
                             f"got batch_size={self.batch_size}")
        if self.reset not in ("batch", "domain", "never"):
            raise ValueError(f"reset must be one of batch, domain, never; got {self.reset!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.order not in (None, "before", "after"):
            raise ValueError(f"order must be 'before', 'after' or None (method default); got {self.order!r}")
        if self.dirichlet is not None and self.dirichlet <= 0:
            raise ValueError(f"dirichlet concentration must be > 0, got {self.dirichlet}")

    def describe(self, method_default_order: str | None = None) -> str:
        order = self.order or (f"method default ({method_default_order})" if method_default_order else "method default")
        parts = [f"protocol={self.name}", f"reset={self.reset}", f"batch_size={self.batch_size}",
                 f"predict={order} update", f"shuffle={self.shuffle}", f"seed={self.seed}"]
        if self.mixed:
            parts.append("mixed domains")
        if self.dirichlet is not None:
            parts.append(f"label shift Dirichlet({self.dirichlet})")
        return ", ".join(parts)

    # ----- the stream ---------------------------------------------------------------------
    def order_indices(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(labels)
        if self.dirichlet is not None:
            return dirichlet_order(labels, self.dirichlet, self.batch_size, rng)
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def stream(self, domains: Sequence[Domain]) -> Iterator[Batch]:
        """Yield the batches in protocol order; ``reset_before`` says when the method is reset."""
        if not domains:
            raise ValueError("domains: at least one test domain is needed")
        rng = np.random.default_rng(self.seed)
        bs = self.batch_size
        if self.mixed:
            images = np.concatenate([d.images for d in domains])
            labels = np.concatenate([d.labels for d in domains])
            names = np.concatenate([np.full(len(d.labels), i) for i, d in enumerate(domains)])
            idx = self.order_indices(labels, rng)
            for k, s in enumerate(range(0, len(idx), bs)):
                sel = idx[s:s + bs]
                yield Batch("mixed", sel, images[sel], labels[sel], self._reset_at(k == 0, True),
                            tuple(domains[j].name for j in names[sel]))
            return
        for di, d in enumerate(domains):
            idx = self.order_indices(d.labels, rng)
            for k, s in enumerate(range(0, len(idx), bs)):
                sel = idx[s:s + bs]
                yield Batch(d.name, sel, d.images[sel], d.labels[sel], self._reset_at(k == 0, di == 0 and k == 0))

    def _reset_at(self, first_of_domain: bool, first_of_stream: bool) -> bool:
        if self.reset == "batch":
            return True
        if self.reset == "domain":
            return first_of_domain
        return first_of_stream


def dirichlet_order(labels: np.ndarray, concentration: float, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Order samples so that class proportions drift over time (non-i.i.d. label shift).

    The stream is cut into T = ceil(N / batch_size) slots; each class c draws slot proportions
    p_c ~ Dirichlet(concentration * 1_T) and its (shuffled) samples are spread over the slots in
    those proportions; slots are concatenated in order, shuffled within. Small concentrations give
    batches dominated by few classes (LAME, Boudiaf et al. 2022; NOTE, Gong et al. 2022).
    """
    n = len(labels)
    slots = max(1, int(np.ceil(n / batch_size)))
    buckets: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for c in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(slots, concentration))
        cuts = (np.cumsum(p)[:-1] * len(ids)).astype(np.int64)
        for t, part in enumerate(np.split(ids, cuts)):
            buckets[t].append(part)
    out = [rng.permutation(np.concatenate(b)) for b in buckets if b and sum(len(x) for x in b)]
    return np.concatenate(out).astype(np.int64)


PROTOCOLS: Registry = Registry("protocol")
PROTOCOLS.add("episodic", Protocol("episodic", reset="batch"))
PROTOCOLS.add("reset-per-domain", Protocol("reset-per-domain", reset="domain"), aliases=("reset-each-shift",))
PROTOCOLS.add("continual", Protocol("continual", reset="never"))
PROTOCOLS.add("mixed", Protocol("mixed", reset="never", mixed=True))
PROTOCOLS.add("single-sample", Protocol("single-sample", reset="domain", batch_size=1, fixed_batch_size=1))
PROTOCOLS.add("label-shift", Protocol("label-shift", reset="domain", dirichlet=0.1))


def get_protocol(name: str, **overrides) -> Protocol:
    """A registered protocol with fields overridden, e.g. ``get_protocol("label-shift", dirichlet=0.01)``."""
    base: Protocol = PROTOCOLS.get(name)
    if overrides:
        valid = {f.name for f in dataclasses.fields(Protocol)} - {"name", "fixed_batch_size"}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"protocol {name!r}: unknown field(s) {bad}; valid: {sorted(valid)}")
        base = dataclasses.replace(base, **overrides)
    return base


def list_protocols() -> list[str]:
    return PROTOCOLS.names()

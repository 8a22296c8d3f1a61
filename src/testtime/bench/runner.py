"""Stream test domains through a method under a protocol and count correct predictions.

Example::

    from testtime.bench import Domain, evaluate, get_protocol
    result = evaluate(method, [Domain("fog", images, labels)], get_protocol("episodic"))
    print(result.summary())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from testtime.bench.protocols import Batch, Domain, Protocol
from testtime.methods.base import Method

PROGRESS_EVERY_S = 10.0  # a progress line at most this often during long loops


class Heartbeat:
    """``heart.due()`` is the elapsed time (s) when a progress line is due (at most every ``every_s``
    seconds, ``PROGRESS_EVERY_S`` by default), else None; always None without ``log``. So a loop longer
    than that is never silent: ``if (t := heart.due()) is not None: heart.log(f"... ({t:.0f}s)")``."""

    def __init__(self, log: Callable[[str], None] | None, every_s: float | None = None) -> None:
        self.log = log
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.t0 = self.last = time.perf_counter()

    def due(self) -> float | None:
        if self.log is None:
            return None
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return None
        self.last = now
        return now - self.t0


@dataclass
class EvalResult:
    method: str
    protocol: str
    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    nonfinite_steps: int = 0
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per domain, by sample index

    def accuracy(self, domain: str) -> float:
        return 100.0 * self.correct[domain] / max(self.total[domain], 1)

    @property
    def accuracies(self) -> dict[str, float]:
        return {d: self.accuracy(d) for d in self.total}

    @property
    def mean_accuracy(self) -> float:
        """Mean over domains of per-domain accuracy (%), the benchmark's headline figure."""
        accs = list(self.accuracies.values())
        return float(np.mean(accs)) if accs else float("nan")

    def summary(self) -> str:
        rows = ", ".join(f"{d} {a:.2f}" for d, a in self.accuracies.items())
        return f"{self.method}: mean {self.mean_accuracy:.2f}% [{rows}] ({self.protocol})"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predictions")
        d["accuracy"] = self.accuracies
        d["mean_accuracy"] = self.mean_accuracy
        return d


def to_float_batch(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] on ``device``."""
    t = torch.as_tensor(images).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def run_batches(
    method: Method, batches: Iterable[Batch], order: str | None, device: torch.device | str = "cpu"
) -> Iterator[tuple[Batch, np.ndarray]]:
    """Step ``method`` through ``batches`` (reset where ``reset_before`` says); yield each batch and its
    predicted classes (predicted before or after its update as ``order``, or the method's default, says)."""
    for batch in batches:
        if batch.reset_before:
            method.reset()
        x = to_float_batch(batch.images, device)
        yield batch, method.step(x, order).argmax(1).cpu().numpy()


def evaluate(
    method: Method,
    domains: Sequence[Domain],
    protocol: Protocol,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run ``protocol`` over ``domains`` with ``method``; returns per-domain accuracy.

    The method is reset whenever the protocol says so (``Batch.reset_before``), and each batch is
    predicted before or after its update as ``protocol.order`` (or the method's default) says.
    With ``log``, a progress line ("[method] batch i/n, domain, running accuracy") at most every
    ``PROGRESS_EVERY_S`` seconds.
    """
    if protocol.batch_size < method.requirements.min_batch_size:
        raise ValueError(
            f"method {method.name!r} needs batches of at least {method.requirements.min_batch_size} images; "
            f"protocol {protocol.name!r} uses batch_size={protocol.batch_size}"
        )
    method.to(device)
    result = EvalResult(method.name, protocol.describe(method.default_order))
    for d in domains:
        result.correct.setdefault(d.name, 0)
        result.total.setdefault(d.name, 0)
        result.predictions[d.name] = np.full(len(d.labels), -1, dtype=np.int64)
    offsets = dict(zip((d.name for d in domains), np.cumsum([0] + [len(d.labels) for d in domains])))
    start = time.perf_counter()
    n_batches = sum(-(-len(d.labels) // protocol.batch_size) for d in domains)
    heart = Heartbeat(log)
    seen = hits = 0
    stream = tqdm(protocol.stream(domains), total=n_batches, disable=not progress, desc=method.name)
    for k, (batch, pred) in enumerate(run_batches(method, stream, protocol.order, device)):
        if (t := heart.due()) is not None and heart.log is not None:
            heart.log(f"[{method.name}] batch {k}/{n_batches} ({batch.domain}), running accuracy "
                      f"{100.0 * hits / max(1, seen):.1f}% ({t:.0f}s)")
        hit = pred == batch.labels
        seen, hits = seen + len(hit), hits + int(hit.sum())
        names = batch.domains or (batch.domain,) * len(hit)
        for name, i, p, h in zip(names, batch.index, pred, hit):
            result.correct[name] += int(h)
            result.total[name] += 1
            # mixed streams index the pooled arrays: map back to the domain's own row
            result.predictions[name][i - offsets[name] if batch.domains else i] = p
    result.wall_s = time.perf_counter() - start
    result.nonfinite_steps = int(method.nonfinite_steps)
    return result

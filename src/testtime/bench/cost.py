"""The cost of evaluating a method: forward / backward passes per image, peak memory.

:class:`CostMeter` counts with hooks, not from what a method declares:

- **forward passes per image**: images entering a backbone, counted by a forward hook on every
  input layer (a ``Conv2d`` reading the image's channels), divided by the test images. A teacher's,
  an anchor's or an augmented view's pass through its own backbone copy counts (CoTTA, MEMO's views).
- **backward passes per image**: a gradient hook on the first adapted parameter fires once per
  backward pass; each counts the images of the last forward pass run with gradients enabled (so a
  backward over MEMO's 32 views counts 32, SAR's two SAM passes count twice).
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over the cell (filled by
  :func:`testtime.store.run_grid`); on CPU the growth of the process's peak resident set size
  (``resource.getrusage(...).ru_maxrss``) during the cell, so 0 when the cell stayed below an earlier
  peak of the same process: an upper bound on what the cell added, not its footprint.

Example::

    meter = CostMeter(method, channels=3)
    before = meter.snapshot(); ...; cost = meter.since(before, n_images=2000)
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn


class CostMeter:
    def __init__(self, method: nn.Module, channels: int) -> None:
        self.forward_images = 0
        self.backward_images = 0
        self._grad_batch = 0
        stems = [m for m in method.modules() if isinstance(m, nn.Conv2d) and m.in_channels == channels]
        if not stems:  # no image convolution (e.g. an MLP): count passes of the whole model
            stems = [getattr(method, "model", method)]
        for m in stems:
            m.register_forward_hook(self._on_forward)
        params = [p for p in method.parameters() if p.requires_grad]
        if params:
            params[0].register_hook(self._on_backward)

    def _on_forward(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        n = int(inputs[0].shape[0])
        self.forward_images += n
        if torch.is_grad_enabled():
            self._grad_batch = n

    def _on_backward(self, grad: torch.Tensor) -> None:
        self.backward_images += self._grad_batch

    def snapshot(self) -> tuple[int, int, float]:
        return self.forward_images, self.backward_images, max_rss_mb()

    def since(self, before: tuple[int, int, float], n_images: int, device: str = "cpu") -> dict[str, float | None]:
        f0, b0, rss0 = before
        n = max(1, n_images)
        return {
            "forward_per_image": (self.forward_images - f0) / n,
            "backward_per_image": (self.backward_images - b0) / n,
            "peak_mem_mb": None if str(device).startswith("cuda") else max(0.0, max_rss_mb() - rss0),
        }


def max_rss_mb() -> float:
    """The process's peak resident set size so far (MiB; ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def evaluate_with_cost(method: nn.Module, domains, protocol, *, device: str = "cpu", channels: int = 3,
                       log=None):
    """:func:`testtime.bench.evaluate` and the cost of the run: ``(result, cost)`` where ``cost`` holds
    ``images_per_s``, ``peak_mem_mb`` (CUDA: ``max_memory_allocated`` over the run; CPU: the max RSS
    growth, see the module docstring), ``forward_per_image`` and ``backward_per_image`` (measured)."""
    from testtime.bench.runner import evaluate

    meter = CostMeter(method, channels)
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = meter.snapshot()
    res = evaluate(method, domains, protocol, device=device, log=log)
    n = sum(res.total.values())
    cost = meter.since(before, n, device)
    if cuda:
        cost["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    cost["images_per_s"] = n / res.wall_s if res.wall_s > 0 else None
    return res, cost

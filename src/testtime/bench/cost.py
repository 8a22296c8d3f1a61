"""The cost of evaluating a method: forward / backward passes per image, peak memory.

:class:`CostMeter` counts with hooks, not from what a method declares:

- **forward passes per image**: images entering a backbone, counted by a forward hook on every
  input layer (a ``Conv2d`` reading the image's channels), divided by the test images. A teacher's,
  an anchor's or an augmented view's pass through its own backbone copy counts (CoTTA, MEMO's views).
- **backward passes per image**: a gradient hook on the first adapted parameter fires once per
  backward pass; each counts the images of the last forward pass run with gradients enabled (so a
  backward over MEMO's 32 views counts 32, SAR's two SAM passes count twice).
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over the cell (filled by
  :func:`testtime.store.run_grid`); on CPU the peak of the process's resident set during the cell
  above its resident set at the start: the kernel's high-water mark (``VmHWM``) is reset to the
  current RSS when the meter takes its snapshot (``/proc/self/clear_refs``, Linux 4.0+), so each cell
  is measured on its own, not against an earlier cell's peak; just before, freed heap memory is given
  back to the system (glibc ``malloc_trim``), else a cell reusing what an earlier one freed would not
  grow the resident set (measured: 60 MB of 60 KB tensors read 0.2 MB without the trim, 58 MB with
  it). Where the reset is not possible (not Linux, or ``/proc`` not writable) it is None (printed as
  a dash), never a misleading 0. It counts what the evaluation allocates (activations, gradients,
  optimizer state, augmented views, copies made during the run); the model and data already resident
  before the snapshot are not in it.

Example::

    meter = CostMeter(method, channels=3)
    before = meter.snapshot(); ...; cost = meter.since(before, n_images=2000)
"""

from __future__ import annotations

import ctypes
import functools
import os

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

    def snapshot(self) -> tuple[int, int, int | None]:
        """Passes so far and the RSS (bytes) after resetting the high-water mark to it (None: no reset)."""
        return self.forward_images, self.backward_images, rss_bytes() if reset_peak_rss() else None

    def since(self, before: tuple[int, int, int | None], n_images: int, device: str = "cpu") -> dict[str, float | None]:
        f0, b0, rss0 = before
        n = max(1, n_images)
        cpu = rss0 is not None and not str(device).startswith("cuda")  # CUDA: filled from its own counter
        return {
            "forward_per_image": (self.forward_images - f0) / n,
            "backward_per_image": (self.backward_images - b0) / n,
            "peak_mem_mb": max(0, peak_rss_bytes() - rss0) / 2**20 if cpu else None,
        }


def rss_bytes() -> int:
    """The current resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Give freed heap memory back to the system, then reset the kernel's resident-set high-water mark
    (``VmHWM``) of this process to its current RSS; False where the reset is not possible (not Linux,
    ``/proc`` not writable).

    (``getrusage().ru_maxrss`` cannot be reset, and Linux carries it over from the parent across
    fork + exec, so a cell below an earlier peak would read 0.)
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (gives freed heap pages back to the system), or None without glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def peak_rss_bytes() -> int:
    """The resident-set high-water mark (``VmHWM``) since the process started or the last reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def evaluate_with_cost(method: nn.Module, domains, protocol, *, device: str = "cpu", channels: int = 3,
                       log=None):
    """:func:`testtime.bench.evaluate` and the cost of the run: ``(result, cost)`` where ``cost`` holds
    ``images_per_s``, ``peak_mem_mb`` (CUDA: ``max_memory_allocated`` over the run; CPU: the peak
    RSS above the RSS at the start, see the module docstring), ``forward_per_image`` and
    ``backward_per_image`` (measured)."""
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

"""Exact activation checkpointing of an encoder's stages (a memory saver for test-time training).

Inside :func:`checkpointed`, each region's forward runs under ``torch.utils.checkpoint``
(``use_reentrant=False``): only the region's input is kept for backward, and its activations are
recomputed during backward. The regions (:func:`checkpoint_regions`) are, for ``"stages"``, the
top-level stages of the encoder: the children of ``encoder.layers`` when it is an ``nn.Sequential``
(the CIFAR ResNets' stages, airbench's conv groups), else the whole encoder; for ``"blocks"``, the
children of each stage that is itself an ``nn.Sequential`` (the ResNets' residual blocks; airbench's
groups stay whole). Finer regions keep more inputs but recompute less at a time: the peak is lower
when a stage holds several blocks (ResNet-20: 3 per stage), the same with one (ResNet-8).
The stem before ``encoder.layers`` is not checkpointed.

Exactness: the recomputation must see what the forward saw and leave no trace. So it runs with
every module of the region in the train/eval mode it had at the forward (a method may switch BN
layers to eval mode between its SSL forward and the backward, as CTA's ``bn="lineage"`` does), and
the region's buffers (BN running statistics and ``num_batches_tracked``) are put back afterwards as
the recomputation found them: a BN layer in train mode moves its running statistics once, at the
forward, never at the recomputation. Train-mode BN normalises with the batch's own statistics,
which the recomputation recomputes from the same input, so the outputs, the loss, the gradients
and the state are the same as without checkpointing (bitwise in the tests: float64, CPU, every
CTA ``bn`` mode). Random ops inside a region replay their draws (``preserve_rng_state``, the default);
the CIFAR encoders have none.

Cost: one more forward of the checkpointed regions per backward (about a third more compute for
a forward + backward).

Example::

    with checkpointed(checkpoint_regions(model.encoder, "stages")):
        z = model.ssl_embed(views)   # activations of each stage recomputed at z's backward
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINT_MODES = ("none", "stages", "blocks")
_MISSING = object()


def check_mode(mode: str) -> None:
    """A one-line ValueError unless ``mode`` is one of :data:`CHECKPOINT_MODES`."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}")


def checkpoint_regions(encoder: nn.Module, mode: str = "stages") -> list[nn.Module]:
    """The modules to checkpoint: ``[]`` for ``"none"``; the children of ``encoder.layers`` when it is a
    non-empty ``nn.Sequential``, else ``[encoder]``, for ``"stages"``; for ``"blocks"``, those stages
    with every non-empty ``nn.Sequential`` stage replaced by its children."""
    check_mode(mode)
    if mode == "none":
        return []
    layers = getattr(encoder, "layers", None)
    if not (isinstance(layers, nn.Sequential) and len(layers) > 0):
        return [encoder]
    if mode == "stages":
        return list(layers)
    return [b for s in layers for b in (list(s) if isinstance(s, nn.Sequential) and len(s) > 0 else [s])]


@contextlib.contextmanager
def _as_at_forward(modules: Sequence[nn.Module], modes: Sequence[bool]) -> Iterator[None]:
    """The recomputation's context: forward-time modes; buffers and modes restored on exit."""
    now = [m.training for m in modules]
    buffers = [b for m in modules for b in m.buffers(recurse=False)]
    saved = [b.detach().clone() for b in buffers]
    for m, mode in zip(modules, modes):
        m.training = mode
    try:
        yield
    finally:  # also when the recomputation stops early (torch's default early_stop)
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
        for m, mode in zip(modules, now):
            m.training = mode


def _checkpointed_forward(region: nn.Module, forward: Any) -> Any:
    modules = list(region.modules())

    def run(*args: Any, **kwargs: Any) -> Any:
        modes = [m.training for m in modules]  # as at this forward
        return checkpoint(
            forward, *args, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _as_at_forward(modules, modes)), **kwargs,
        )

    return run


@contextlib.contextmanager
def checkpointed(regions: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, every forward of a module in ``regions`` is checkpointed (see the module
    docstring); an empty ``regions`` does nothing. The modules are left as they were on exit."""
    previous = [r.__dict__.get("forward", _MISSING) for r in regions]
    try:
        for r in regions:
            r.forward = _checkpointed_forward(r, r.forward)
        yield
    finally:
        for r, prev in zip(regions, previous):
            if prev is _MISSING:
                r.__dict__.pop("forward", None)
            else:
                r.forward = prev

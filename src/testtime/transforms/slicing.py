"""Per-image random draws for a whole global batch, kept for this process's rows (data parallelism).

In data-parallel training (:mod:`testtime.train.distributed`) each process holds rows ``[lo, hi)``
of a global batch of ``total`` images. Inside ``with batch_slice(lo, hi, total)`` the batched
training transforms (:func:`~testtime.transforms.crop_flip`, :func:`~testtime.transforms.simclr_augment`
and so :func:`~testtime.transforms.simclr_views`, :func:`~testtime.transforms.rotation.rotate_random`)
draw every per-image parameter for all ``total`` images from the step's generator and keep rows
``lo:hi``. Each image then gets exactly the draws it gets in a single-process run of the same
global batch, and the generator ends in the same state, so the next transform of the step lines up
too. Only the parameters (a few numbers per image) are drawn for the whole batch; the images are
transformed for the local rows only.

A transform called on a batch whose size is not ``hi - lo`` (e.g. on a concatenation of views)
draws for that batch as it is, on every process alike, and so do draws an objective makes itself
(nc-ttt's feature noise): every rank then gets the same values for its own images. Outside the
context nothing changes.

Example::

    >>> import torch
    >>> from testtime.transforms import crop_flip
    >>> x = torch.rand(8, 3, 8, 8)
    >>> full = crop_flip(x, torch.Generator().manual_seed(0))
    >>> with batch_slice(4, 8, 8):
    ...     part = crop_flip(x[4:], torch.Generator().manual_seed(0))
    >>> bool(torch.equal(full[4:], part))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SLICE: ContextVar[tuple[int, int, int] | None] = ContextVar("testtime_batch_slice", default=None)


@contextmanager
def batch_slice(lo: int, hi: int, total: int) -> Iterator[None]:
    """Within the block, batches of ``hi - lo`` images are rows ``lo:hi`` of a batch of ``total``."""
    if not 0 <= lo < hi <= total:
        raise ValueError(f"batch_slice: need 0 <= lo < hi <= total, got lo={lo}, hi={hi}, total={total}")
    token = _SLICE.set((int(lo), int(hi), int(total)))
    try:
        yield
    finally:
        _SLICE.reset(token)


def draw_rows(b: int) -> tuple[int, slice]:
    """For a batch of ``b`` images: (how many rows of parameters to draw, which of them are this batch's)."""
    s = _SLICE.get()
    if s is None or s[1] - s[0] != b:
        return b, slice(None)
    return s[2], slice(s[0], s[1])

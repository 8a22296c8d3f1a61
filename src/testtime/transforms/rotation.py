"""Rotation prediction views for TTT (Sun et al., "Test-Time Training with Self-Supervision for
Generalization under Distribution Shifts", ICML 2020, section 2 / Gidaris et al. 2018).

Label ``k`` in {0, 1, 2, 3} means the image is rotated by ``k * 90`` degrees counter-clockwise
(``torch.rot90`` over the (H, W) axes). Two ways to build a rotation batch, as in the original
code (``rotate_batch(inputs, 'expand' | 'rand')``):

- :func:`rotate_expand`: every image in all four rotations (4B images), used at source time;
- :func:`rotate_random`: one random rotation per image (B images), used at test time on the
  augmented copies of one test image.

Images must be square, otherwise a rotated image has another shape than its batch.

Example::

    >>> import torch
    >>> x = torch.rand(2, 3, 8, 8)
    >>> xr, y = rotate_expand(x)
    >>> xr.shape, y.tolist()
    (torch.Size([8, 3, 8, 8]), [0, 0, 1, 1, 2, 2, 3, 3])
"""

from __future__ import annotations

import torch

from testtime.transforms.slicing import draw_rows

NUM_ROTATIONS = 4


def _check_square(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"images: expected a tensor (B, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"images: rotation prediction needs square images, got H={x.shape[-2]}, W={x.shape[-1]}")


def rotate_by_labels(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rotate image ``i`` by ``labels[i] * 90`` degrees counter-clockwise.

    Args:
        x: (B, C, H, W) images, H == W.
        labels: (B,) integer rotation labels in {0, 1, 2, 3}.
    Returns:
        (B, C, H, W) rotated images.
    """
    _check_square(x)
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels: expected shape ({x.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_ROTATIONS):
        raise ValueError(f"labels: rotation labels must lie in 0..{NUM_ROTATIONS - 1}")
    out = x.clone()
    labels_cpu = labels.cpu()
    for k in range(1, NUM_ROTATIONS):
        sel = (labels_cpu == k).nonzero().squeeze(1).to(x.device)
        if sel.numel():
            out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
    return out


def rotate_expand(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image: ((4B, C, H, W), (4B,) labels), rotation-major order."""
    _check_square(x)
    b = x.shape[0]
    xs = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)], dim=0)  # (4B, C, H, W)
    labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(b)  # (4B,)
    return xs, labels


def rotate_random(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly drawn rotation per image; labels drawn on the CPU from ``g``.

    Returns ((B, C, H, W) rotated images, (B,) int64 labels on ``x.device``).
    """
    _check_square(x)
    n, mine = draw_rows(x.shape[0])  # all rows, except inside batch_slice (data parallelism)
    labels = torch.randint(0, NUM_ROTATIONS, (n,), generator=g)[mine].to(x.device)
    return rotate_by_labels(x, labels), labels

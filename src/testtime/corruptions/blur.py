"""Blur family: defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur.

Hendrycks & Dietterich, ICLR 2019 (``hendrycks/robustness``, ``ImageNet-C/create_c``).
All functions map float (N, C, H, W) in [0, 1] to (N, C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch

from testtime.corruptions import _ops
from testtime.corruptions.registry import CORRUPTIONS, Context


@CORRUPTIONS.register("gaussian_blur", family="blur", random=False, rgb=False)
def gaussian_blur(x: torch.Tensor, sigma: float, ctx: Context) -> torch.Tensor:
    """scikit-image ``gaussian(sigma)``: SciPy Gaussian, truncate 4, border ``nearest``."""
    return _ops.gaussian_filter(x, sigma, truncate=4.0, mode="edge")


@CORRUPTIONS.register("defocus_blur", family="blur", random=False, rgb=False)
def defocus_blur(x: torch.Tensor, p: tuple[float, float], ctx: Context) -> torch.Tensor:
    """Correlation with an anti-aliased disk (radius, alias_blur); OpenCV ``filter2D``, reflect-101.

    uint8 output: within one level of the generator (float64 round-off there, see :mod:`testtime.corruptions`)."""
    return _ops.correlate2d(x, _ops.disk_kernel(float(p[0]), float(p[1])), "reflect101")


def glass_shuffle(x: torch.Tensor, delta: int, offsets: torch.Tensor) -> torch.Tensor:
    """The generator's local pixel "swap" loop, with its numpy semantics, on (N, C, H, W).

    The loop visits rows ``H - d .. d + 1`` and, inside each, columns ``W - d .. d + 1`` (both
    descending) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` with
    ``(h', w') = (h + dy, w + dx)``. On numpy arrays the right-hand side holds *views*, so this
    copies ``x[h', w']`` into ``x[h, w]`` and leaves ``x[h', w']`` unchanged: a sequential copy,
    not a swap. ``offsets`` (iterations, positions, 2, N) holds (dx, dy) per visit and image,
    in visiting order. With d = 1 every source is still unvisited when read, so one iteration is
    one gather; larger d runs the sequential loop, vectorised over the batch.
    """
    n, c, h, w = x.shape
    rows = torch.arange(h - delta, delta, -1, device=x.device)  # visiting order
    cols = torch.arange(w - delta, delta, -1, device=x.device)
    if len(rows) == 0 or len(cols) == 0:
        return x
    flat = x.reshape(n, c, h * w).clone()  # (N, C, HW)
    for it in range(offsets.shape[0]):
        dx = offsets[it, :, 0].T.reshape(n, len(rows), len(cols))  # (N, rows, cols)
        dy = offsets[it, :, 1].T.reshape(n, len(rows), len(cols))
        dst = (rows[:, None] * w + cols[None, :]).reshape(-1)  # (P,)
        src = ((rows[None, :, None] + dy) * w + (cols[None, None, :] + dx)).reshape(n, -1)  # (N, P)
        if delta == 1:
            index = torch.arange(h * w, device=x.device).repeat(n, 1)  # (N, HW): identity
            index[:, dst] = src
            flat = flat.gather(2, index[:, None, :].expand(n, c, h * w))
        else:
            ar = torch.arange(n, device=x.device)
            for k in range(len(dst)):
                flat[:, :, dst[k]] = flat[ar, :, src[:, k]]
    return flat.reshape(n, c, h, w)


@CORRUPTIONS.register("glass_blur", family="blur", random=True, rgb=False)
def glass_blur(x: torch.Tensor, p: tuple[float, int, int], ctx: Context) -> torch.Tensor:
    """Gaussian blur, local pixel shuffling, Gaussian blur again. p = (sigma, max_delta, iterations).

    Offsets (dx, dy) are drawn from ``[-d, d)`` (``np.random.randint(-d, d)``) per visited
    position and image; see :func:`glass_shuffle` for the shuffle. With uint8 input the blurred
    image is truncated to 8 bits before shuffling, as the generator's ``np.uint8`` cast does.
    """
    sigma, delta, iters = float(p[0]), int(p[1]), int(p[2])
    n, _, h, w = x.shape
    y = _ops.gaussian_filter(x, sigma, truncate=4.0, mode="edge")
    if ctx.quantized:
        y = torch.floor(y * 255 + 1e-4).clamp(0, 255) / 255
    npos = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    offsets = ctx.rng.randint(-delta, delta, (iters, npos, 2, n))
    y = glass_shuffle(y, delta, offsets)
    return _ops.gaussian_filter(y, sigma, truncate=4.0, mode="edge")


@CORRUPTIONS.register("motion_blur", family="blur", random=True, rgb=False)
def motion_blur(x: torch.Tensor, p: tuple[float, float], ctx: Context) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)``, angle ~ U(-45, 45) degrees per image.

    With uint8 input the result is stored as ImageMagick's 8-bit PNG output is
    (:func:`~testtime.corruptions._ops.imagemagick_png8`: ``floor(round(65535 y) / 257)``).
    """
    angles = ctx.rng.uniform((x.shape[0],), -45.0, 45.0, dtype=torch.float64)
    y = _ops.motion_blur(x, float(p[0]), float(p[1]), angles)
    if ctx.quantized:
        y = _ops.imagemagick_png8(y)
    return y


def zoom_factors(p: tuple[float, float, float]) -> np.ndarray:
    """The generator's ``np.arange(start, stop, step)`` zoom factors."""
    return np.arange(p[0], p[1], p[2])


@CORRUPTIONS.register("zoom_blur", family="blur", random=False, rgb=False)
def zoom_blur(x: torch.Tensor, p: tuple[float, float, float], ctx: Context) -> torch.Tensor:
    """Average of the image and its clipped zooms by ``np.arange(*p)`` (bilinear, SciPy ``zoom``)."""
    zs = zoom_factors(p)
    _, _, h, w = x.shape
    # factors that give the same crop and output sizes give the same image: compute each once
    groups: dict[tuple[int, int, int, int], list[float]] = {}
    for z in zs:
        ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
        groups.setdefault((ch, cw, int(round(ch * z)), int(round(cw * z))), []).append(float(z))
    out = x.clone()
    for factors in groups.values():
        out.add_(_ops.clipped_zoom(x, factors[0]), alpha=float(len(factors)))
    return out / (len(zs) + 1)

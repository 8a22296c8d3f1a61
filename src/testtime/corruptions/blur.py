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
    """Correlation with an anti-aliased disk (radius, alias_blur); OpenCV ``filter2D``, reflect-101."""
    return _ops.correlate2d(x, _ops.disk_kernel(float(p[0]), float(p[1])), "reflect101")


@CORRUPTIONS.register("glass_blur", family="blur", random=True, rgb=False)
def glass_blur(x: torch.Tensor, p: tuple[float, int, int], ctx: Context) -> torch.Tensor:
    """Gaussian blur, local pixel shuffling, Gaussian blur again. p = (sigma, max_delta, iterations).

    The shuffle visits rows ``H - d .. d + 1`` and columns ``W - d .. d + 1`` (descending) and swaps
    each pixel with the one at offset ``(dy, dx)`` drawn from ``[-d, d)`` (the generator's
    ``np.random.randint(-d, d)``); swaps are sequential, so this loops over positions and is
    vectorised over the batch. With uint8 input the blurred image is truncated to 8 bits before
    shuffling, as the generator's ``np.uint8`` cast does.
    """
    sigma, delta, iters = float(p[0]), int(p[1]), int(p[2])
    n, c, h, w = x.shape
    y = _ops.gaussian_filter(x, sigma, truncate=4.0, mode="edge")
    if ctx.quantized:
        y = torch.floor(y * 255 + 1e-4).clamp(0, 255) / 255
    flat = y.reshape(n, c, h * w).clone()  # (N, C, HW)
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    npos = len(rows) * len(cols)
    if npos > 0:
        d = ctx.rng.randint(-delta, delta, (iters, npos, 2, n))  # dx, dy per position and image
        ar = torch.arange(n, device=x.device)
        for it in range(iters):
            k = 0
            for hh in rows:
                for ww in cols:
                    i1 = hh * w + ww
                    i2 = (hh + d[it, k, 1]) * w + (ww + d[it, k, 0])  # (N,)
                    v1 = flat[:, :, i1].clone()  # (N, C)
                    flat[:, :, i1] = flat[ar, :, i2]
                    flat[ar, :, i2] = v1
                    k += 1
    return _ops.gaussian_filter(flat.reshape(n, c, h, w), sigma, truncate=4.0, mode="edge")


@CORRUPTIONS.register("motion_blur", family="blur", random=True, rgb=False)
def motion_blur(x: torch.Tensor, p: tuple[float, float], ctx: Context) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)``, angle ~ U(-45, 45) degrees per image.

    With uint8 input the result is rounded to 8 bits, as ImageMagick's PNG output is.
    """
    angles = ctx.rng.uniform((x.shape[0],), -45.0, 45.0, dtype=torch.float64)
    y = _ops.motion_blur(x, float(p[0]), float(p[1]), angles)
    if ctx.quantized:
        y = torch.round(y.clamp(0, 1) * 255) / 255
    return y


def zoom_factors(p: tuple[float, float, float]) -> np.ndarray:
    """The generator's ``np.arange(start, stop, step)`` zoom factors."""
    return np.arange(p[0], p[1], p[2])


@CORRUPTIONS.register("zoom_blur", family="blur", random=False, rgb=False)
def zoom_blur(x: torch.Tensor, p: tuple[float, float, float], ctx: Context) -> torch.Tensor:
    """Average of the image and its clipped zooms by ``np.arange(*p)`` (bilinear, SciPy ``zoom``)."""
    zs = zoom_factors(p)
    out = torch.zeros_like(x)
    for z in zs:
        out += _ops.clipped_zoom(x, float(z))
    return (x + out) / (len(zs) + 1)

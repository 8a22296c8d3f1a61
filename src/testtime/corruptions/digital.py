"""Digital family: brightness, contrast, saturate, pixelate, jpeg_compression, elastic_transform.

Hendrycks & Dietterich, ICLR 2019 (``hendrycks/robustness``, ``ImageNet-C/create_c``).
All functions map float (N, C, H, W) in [0, 1] to (N, C, H, W).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from testtime.corruptions import _ops
from testtime.corruptions.registry import CORRUPTIONS, Context


@CORRUPTIONS.register("brightness", family="digital", random=False, rgb=True)
def brightness(x: torch.Tensor, shift: float, ctx: Context) -> torch.Tensor:
    """HSV value channel ``v <- clip(v + shift, 0, 1)`` (scikit-image rgb2hsv / hsv2rgb).

    uint8 output: within one level of the generator (its float64 round-off truncates some exact
    levels one lower; see :mod:`testtime.corruptions`)."""
    hsv = _ops.rgb_to_hsv(x)
    hsv = torch.cat((hsv[:, :2], (hsv[:, 2:] + shift).clamp(0, 1)), dim=1)
    return _ops.hsv_to_rgb(hsv)


@CORRUPTIONS.register("saturate", family="digital", random=False, rgb=True)
def saturate(x: torch.Tensor, p: tuple[float, float], ctx: Context) -> torch.Tensor:
    """HSV saturation ``s <- clip(s * p[0] + p[1], 0, 1)``; uint8 output within one level of the generator."""
    hsv = _ops.rgb_to_hsv(x)
    hsv = torch.cat((hsv[:, :1], (hsv[:, 1:2] * p[0] + p[1]).clamp(0, 1), hsv[:, 2:]), dim=1)
    return _ops.hsv_to_rgb(hsv)


@CORRUPTIONS.register("contrast", family="digital", random=False, rgb=False)
def contrast(x: torch.Tensor, c: float, ctx: Context) -> torch.Tensor:
    """``(x - m) * c + m`` with m the per-image, per-channel mean."""
    m = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    return (x - m) * c + m


# ----------------------------------------------------------------------------- pixelate

_PREC = 22  # Pillow's PRECISION_BITS for 8-bit resampling (32 - 8 - 2)


@lru_cache(maxsize=64)
def box_weights(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pillow's ``BOX`` resampling coefficients for one axis.

    Pillow's ``precompute_coeffs``: scale = in / out, support 0.5 * max(scale, 1); output pixel
    ``o`` averages the ``count[o]`` input pixels whose centres fall in its box. Returns (float
    weights (out, in), the 0/1 support (out, in), count (out,), and whether Pillow's 8-bit
    fixed-point weight ``int(0.5 + 2^22 / count)`` is >= the true ``2^22 / count`` (out,)).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        for xi in range(xmin, xmax):
            t = (xi - center + 0.5) / filterscale
            w[xx, xi] = 1.0 if -0.5 < t <= 0.5 else 0.0
    count = np.maximum(w.sum(axis=1), 1).astype(np.int64)
    fixed = np.floor(0.5 + (1 << _PREC) / count).astype(np.int64)
    up = fixed * count >= (1 << _PREC)
    return (
        torch.from_numpy(w / count[:, None]),
        torch.from_numpy(w),
        torch.from_numpy(count.astype(np.float64)),
        torch.from_numpy(up),
    )


def _round_like_pillow(total: torch.Tensor, count: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit ``(total * kk + 2^21) >> 22`` with ``kk = int(0.5 + 2^22 / count)``, in float32.

    ``total * kk / 2^22`` differs from ``total / count`` by less than 1 / (2 count), so the
    result is ``total / count`` rounded to nearest, ties (``total / count = k + 1/2``, exact in
    float) going up where ``kk >= 2^22 / count`` and down elsewhere.
    """
    q = total / count
    return torch.where(up, torch.floor(q + 0.5), torch.ceil(q - 0.5)).clamp(0, 255)


def box_resize(x: torch.Tensor, out_h: int, out_w: int, quantized: bool) -> torch.Tensor:
    """Pillow ``resize((out_w, out_h), BOX)`` on (N, C, H, W); horizontal pass first.

    ``quantized=True`` reproduces Pillow's 8-bit arithmetic exactly (each pass sums the box in
    float32, exact for 8-bit values, then rounds as :func:`_round_like_pillow`); otherwise the
    float result (Pillow's mode ``F``).
    """
    n, c, h, w = x.shape
    wf_x, sup_x, cnt_x, up_x = (t.to(x.device) for t in box_weights(w, out_w))
    wf_y, sup_y, cnt_y, up_y = (t.to(x.device) for t in box_weights(h, out_h))
    if not quantized:
        y = (x.reshape(-1, w) @ wf_x.to(x.dtype).T).reshape(n, c, h, out_w)
        return (y.transpose(2, 3).reshape(-1, h) @ wf_y.to(x.dtype).T).reshape(n, c, out_w, out_h).transpose(2, 3)
    v = torch.round(x.to(torch.float32) * 255)
    s = (v.reshape(-1, w) @ sup_x.float().T).reshape(n, c, h, out_w)  # box sums along W
    v = _round_like_pillow(s, cnt_x.float(), up_x)
    s = (v.transpose(2, 3).reshape(-1, h) @ sup_y.float().T).reshape(n, c, out_w, out_h)  # along H
    v = _round_like_pillow(s, cnt_y.float(), up_y).transpose(2, 3)  # (N, C, out_h, out_w)
    return (v / 255).to(x.dtype)


@CORRUPTIONS.register("pixelate", family="digital", random=False, rgb=False)
def pixelate(x: torch.Tensor, c: float, ctx: Context) -> torch.Tensor:
    """Box-downscale to ``int(size * c)`` and box-upscale back (Pillow ``BOX``)."""
    _, _, h, w = x.shape
    small = box_resize(x, int(h * c), int(w * c), ctx.quantized)
    return box_resize(small, h, w, ctx.quantized)


# ----------------------------------------------------------------------------- jpeg


@CORRUPTIONS.register("jpeg_compression", family="digital", random=False, rgb=False)
def jpeg_compression(x: torch.Tensor, quality: int, ctx: Context) -> torch.Tensor:
    """A JPEG round trip through Pillow (libjpeg) at ``quality``, one image at a time.

    Images are rounded to 8 bits first (a JPEG codec only takes 8-bit images).
    """
    n, c, h, w = x.shape
    arr = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    out = np.empty_like(arr)
    mode = "RGB" if c == 3 else "L"
    for i in range(n):
        buf = io.BytesIO()
        Image.frombytes(mode, (w, h), arr[i].tobytes()).save(buf, "JPEG", quality=int(quality))
        # decode with the JPEG decoder directly (same libjpeg decode as Image.open, less Python)
        dec = Image.frombytes(mode, (w, h), buf.getvalue(), "jpeg", mode, "")
        out[i] = np.frombuffer(dec.tobytes(), dtype=np.uint8).reshape(h, w, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255


# ----------------------------------------------------------------------------- elastic


def _affine_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """OpenCV ``getAffineTransform``: the (N, 2, 3) map sending 3 points ``src`` to ``dst`` (N, 3, 2)."""
    ones = torch.ones(*src.shape[:-1], 1, dtype=src.dtype, device=src.device)
    p = torch.cat((src, ones), dim=-1)  # (N, 3, 3), rows [x y 1]
    return torch.linalg.solve(p, dst).transpose(1, 2)  # (N, 2, 3)


@CORRUPTIONS.register("elastic_transform", family="digital", random=True, rgb=False)
def elastic_transform(x: torch.Tensor, p: tuple[float, float, float], ctx: Context) -> torch.Tensor:
    """Random affine warp, then a smooth random displacement field (bilinear resampling).

    p = (alpha, sigma, jitter) in pixels. The affine moves 3 points around the centre by
    U(-jitter, jitter) (OpenCV ``warpAffine``, bilinear, border reflect-101); the displacement
    fields are ``alpha * gaussian(U(-1, 1), sigma, truncate=3, mode=reflect)`` for dx, then dy,
    applied with ``map_coordinates(order=1, mode="reflect")``.
    """
    alpha, sigma, jitter = p
    n, _, h, w = x.shape
    dev = x.device
    # points as the generator builds them: (h // 2, w // 2) +- min(h, w) // 3, read by OpenCV as (x, y)
    cs = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    ss = float(min(h, w) // 3)
    pts1 = torch.stack((cs + ss, torch.stack((cs[0] + ss, cs[1] - ss)), cs - ss))  # (3, 2)
    pts1 = pts1.to(torch.float32).to(torch.float64)
    pts2 = pts1[None] + ctx.rng.uniform((n, 3, 2), -jitter, jitter).to(torch.float64).cpu()  # (N, 3, 2)
    m = _affine_from_points(pts1[None].expand(n, 3, 2), pts2)  # (N, 2, 3)
    a, t = m[:, :, :2], m[:, :, 2:]
    ainv = torch.linalg.inv(a)
    minv = torch.cat((ainv, -ainv @ t), dim=2).to(device=dev, dtype=torch.float32)  # (N, 2, 3): dst -> src
    ar_h = torch.arange(h, dtype=torch.float32, device=dev)
    ar_w = torch.arange(w, dtype=torch.float32, device=dev)
    yy, xx = torch.meshgrid(ar_h, ar_w, indexing="ij")
    sx = minv[:, 0, 0, None, None] * xx + minv[:, 0, 1, None, None] * yy + minv[:, 0, 2, None, None]  # (N, H, W)
    sy = minv[:, 1, 0, None, None] * xx + minv[:, 1, 1, None, None] * yy + minv[:, 1, 2, None, None]
    warped = _ops.sample_bilinear(x, sy, sx, "reflect101")

    dx = ctx.rng.uniform((n, 1, h, w), -1.0, 1.0)
    dy = ctx.rng.uniform((n, 1, h, w), -1.0, 1.0)
    dx = _ops.gaussian_filter(dx, sigma, truncate=3.0, mode="symmetric")[:, 0] * alpha  # (N, H, W)
    dy = _ops.gaussian_filter(dy, sigma, truncate=3.0, mode="symmetric")[:, 0] * alpha
    return _ops.sample_bilinear(warped, yy.to(x.dtype) + dy, xx.to(x.dtype) + dx, "symmetric")

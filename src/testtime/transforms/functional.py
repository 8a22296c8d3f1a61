"""Batched, per-sample image operations on float tensors in [0, 1], (B, C, H, W), C in {1, 3}.

Semantics follow torchvision's functional ops (and kornia's ``ColorJitter`` helpers, which copy
them): brightness multiplies, contrast blends with the mean grey level of each image, saturation
blends with the grey image, hue rotates the HSV hue by a fraction of a turn, grayscale uses
ITU-R 601 luma weights (0.299, 0.587, 0.114). Every factor is a (B,) tensor: one value per image.
Grey (C = 1) images pass saturation, hue and grayscale unchanged.

Example::

    >>> import torch
    >>> x = torch.rand(4, 3, 8, 8)
    >>> adjust_brightness(x, torch.ones(4)).equal(x.clamp(0, 1))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


def _f(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return factor.to(x.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma; grey input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)  # (B, 1, H, W)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(x * factor)`` per image."""
    return (x * _f(factor, x)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean grey level: ``clamp((x - m) * factor + m)``."""
    m = to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return ((x - m) * _f(factor, x) + m).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its grey version: ``clamp((x - g) * factor + g)``."""
    if x.shape[1] == 1:
        return x
    g = to_grayscale(x)  # (B, 1, H, W)
    return ((x - g) * _f(factor, x) + g).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dsafe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / dsafe, (maxc - g) / dsafe, (maxc - b) / dsafe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], dim=1)  # (B, 3, H, W), h in [0, 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i.unsqueeze(1))
    g = torch.stack([t, v, v, q, p, p], 1).gather(1, i.unsqueeze(1))
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i.unsqueeze(1))
    return torch.cat([r, g, b], dim=1)  # (B, 3, H, W)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``factor`` turns (in [-0.5, 0.5]) per image (torchvision's convention)."""
    if x.shape[1] == 1:
        return x
    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0] + factor.to(x.dtype).view(-1, 1, 1)) % 1.0  # (B, H, W)
    return _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1)).clamp(0, 1)


def grayscale_like(x: torch.Tensor) -> torch.Tensor:
    """Grey version with the input's channel count (3 identical channels for RGB)."""
    return to_grayscale(x).expand_as(x).contiguous()


def resized_crop(
    x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop ``boxes`` (B, 4) = (x0, y0, w, h) in pixels from each image and resize to ``size``.

    Bilinear sampling at output pixel centres (torchvision's crop-then-resize without antialias);
    ``flip`` (B,) bool mirrors the output horizontally.
    """
    b, _, hh, ww = x.shape
    boxes = boxes.to(x.dtype)
    x0, y0, bw, bh = boxes.unbind(1)
    sx, sy = bw / ww, bh / hh
    cx, cy = (2 * x0 + bw) / ww - 1, (2 * y0 + bh) / hh - 1
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size[0], size[1]], align_corners=False)  # (B, h, w, 2)
    # sample only inside the box (crop first, then resize: edge pixels replicate the crop's edge)
    lo = torch.stack([(2 * x0 + 1) / ww - 1, (2 * y0 + 1) / hh - 1], dim=1).view(b, 1, 1, 2)
    hi = torch.stack([(2 * (x0 + bw) - 1) / ww - 1, (2 * (y0 + bh) - 1) / hh - 1], dim=1).view(b, 1, 1, 2)
    grid = torch.maximum(torch.minimum(grid, hi), lo)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pad_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to (H, W) at ``offsets`` (B, 2) = (dy, dx) in [0, 2p]."""
    b, c, hh, ww = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    rows = offsets[:, 0:1].to(x.device) + torch.arange(hh, device=x.device)  # (B, H)
    cols = offsets[:, 1:2].to(x.device) + torch.arange(ww, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bi, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()

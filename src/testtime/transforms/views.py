"""SimCLR views (the TTT++ recipe used by CTA) and the standard supervised augmentation, batched.

Every image gets its own random parameters; all parameters are drawn on the CPU from an explicit
``torch.Generator`` and only then moved to the images' device, so the same seed gives the same views
on CPU and GPU (up to floating-point differences of the ops).

The TTT++ recipe (vita-epfl/ttt-plus-plus, ``cifar/utils/prepare_dataset.py``), as CTA uses it
(paper section 3.1): RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3), horizontal flip p 0.5, colour
jitter (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1) applied with p 0.8 in a random order
per image, grayscale p 0.2. Normalisation happens inside the models.

Example::

    >>> import torch
    >>> from testtime.transforms import SimCLRViewsConfig, simclr_views
    >>> x = torch.rand(8, 3, 32, 32)
    >>> v1, v2 = simclr_views(x, torch.Generator().manual_seed(0), SimCLRViewsConfig())
    >>> v1.shape, v2.shape
    (torch.Size([8, 3, 32, 32]), torch.Size([8, 3, 32, 32]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from testtime.transforms import functional as TF
from testtime.transforms.slicing import draw_rows

_JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@dataclass(frozen=True)
class SimCLRViewsConfig:
    """The TTT++ SimCLR augmentation; defaults are the recipe's values."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params, batched: (n, 4) = (x0, y0, w, h) integer boxes.

    Ten attempts per image of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)); the
    first that fits is kept, else the central crop at the clamped ratio (torchvision's fallback).
    """
    tries = 10
    area = height * width
    s = _uniform(n * tries, *scale, g).view(n, tries)  # (n, 10)
    logr = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), g).view(n, tries)
    r = torch.exp(logr)
    w = torch.round(torch.sqrt(area * s * r))
    h = torch.round(torch.sqrt(area * s / r))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)  # (n, 10)
    first = torch.where(ok.any(1), ok.to(torch.int64).argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    boxes = torch.zeros(n, 4, dtype=torch.float64)
    for_fallback = first < 0
    idx = first.clamp_min(0)
    cw = w.gather(1, idx.view(-1, 1)).squeeze(1)
    ch = h.gather(1, idx.view(-1, 1)).squeeze(1)
    if for_fallback.any():  # central crop (torchvision's fallback)
        in_ratio = width / height
        if in_ratio < ratio[0]:
            fw, fh = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            fw, fh = int(round(height * ratio[1])), height
        else:
            fw, fh = width, height
        cw = torch.where(for_fallback, torch.full_like(cw, fw), cw)
        ch = torch.where(for_fallback, torch.full_like(ch, fh), ch)
    x0 = torch.floor(u[:, 0] * (width - cw + 1))
    y0 = torch.floor(u[:, 1] * (height - ch + 1))
    x0 = torch.where(for_fallback, torch.floor((width - cw) / 2), x0)
    y0 = torch.where(for_fallback, torch.floor((height - ch) / 2), y0)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = x0, y0, cw, ch
    return boxes


def simclr_augment(x: torch.Tensor, g: torch.Generator, cfg: SimCLRViewsConfig = SimCLRViewsConfig()) -> torch.Tensor:
    """One random SimCLR view of each image.

    Args:
        x: (B, C, H, W) float images in [0, 1], C in {1, 3}, on any device.
        g: a CPU ``torch.Generator`` (all parameters are drawn from it).
        cfg: the recipe.
    Returns:
        (B, C, H, W) float views in [0, 1], same device and dtype.
    """
    _check_images(x)
    b, c, hh, ww = x.shape
    n, mine = draw_rows(b)  # n = b, mine = all rows, except inside batch_slice (data parallelism)
    boxes = sample_crop_boxes(n, hh, ww, cfg.crop_scale, cfg.crop_ratio, g)[mine]
    flip = (torch.rand(n, generator=g) < cfg.flip_p)[mine]
    out = TF.resized_crop(x, boxes.to(x.device), (hh, ww), flip)
    # colour jitter: per-image factors, applied with p jitter_p, in a random order per image
    apply = (torch.rand(n, generator=g) < cfg.jitter_p)[mine]
    factors = torch.stack(
        [
            _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, g),
            _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, g),
            _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, g),
            _uniform(n, -cfg.hue, cfg.hue, g),
        ],
        dim=1,
    ).to(torch.float32)[mine]  # (B, 4)
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)[mine]  # (B, 4) a permutation per image
    gray = (torch.rand(n, generator=g) < cfg.grayscale_p)[mine]
    out = out.clamp(0, 1)
    for pos in range(4):
        for op in range(4):
            sel = (apply & (order[:, pos] == op)).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            sel_d = sel.to(x.device)
            out[sel_d] = _JITTER_OPS[op](out[sel_d], factors[sel, op].to(x.device))
    sel = gray.nonzero().squeeze(1).to(x.device)
    if sel.numel() and c == 3:
        out[sel] = TF.grayscale_like(out[sel])
    return out


def simclr_views(
    x: torch.Tensor, g: torch.Generator, cfg: SimCLRViewsConfig = SimCLRViewsConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent SimCLR views (x_hat, x_tilde) of each image: ((B, C, H, W), (B, C, H, W))."""
    return simclr_augment(x, g, cfg), simclr_augment(x, g, cfg)


@dataclass(frozen=True)
class CropFlipConfig:
    """The supervised CIFAR augmentation: random crop with zero padding, horizontal flip, and
    optionally Cutout (DeVries & Taylor 2017, arXiv:1708.04552): one ``cutout`` x ``cutout`` square
    per image set to 0, its centre uniform over the image and the square clipped at the border (the
    paper's convention; airbench96 keeps the square inside the image). 0 = no Cutout, and then no
    random number is drawn for it, so the crop and flip draws are those of the plain augmentation."""

    padding: int = 4
    flip_p: float = 0.5
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must lie in [0, 1], got {self.flip_p}")
        if self.cutout < 0:
            raise ValueError(f"cutout must be >= 0 (side of the zeroed square in pixels; 0 = off), got {self.cutout}")


def crop_flip(x: torch.Tensor, g: torch.Generator, cfg: CropFlipConfig = CropFlipConfig()) -> torch.Tensor:
    """RandomCrop(H, padding) + RandomHorizontalFlip (+ Cutout) per image: (B, C, H, W) -> (B, C, H, W)."""
    _check_images(x)
    n, mine = draw_rows(x.shape[0])  # all rows, except inside batch_slice (data parallelism)
    offsets = torch.randint(0, 2 * cfg.padding + 1, (n, 2), generator=g)[mine]
    flip = (torch.rand(n, generator=g) < cfg.flip_p)[mine]
    out = TF.pad_crop(x, offsets, cfg.padding)
    sel = flip.nonzero().squeeze(1).to(x.device)
    out[sel] = out[sel].flip(-1)
    if cfg.cutout:
        h, w = x.shape[-2:]
        centres = torch.stack([torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)], 1)[mine]
        out = out * _cutout_keep(centres, cfg.cutout, h, w).to(out.device, out.dtype)
    return out


def _cutout_keep(centres: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """(B, 1, H, W) mask, 0 inside each image's ``size`` x ``size`` square at ``centres`` (B, 2) = (y, x)."""
    lo = centres - size // 2  # (B, 2); the square spans [lo, lo + size), clipped at the border
    ys, xs = torch.arange(h), torch.arange(w)
    in_y = (ys >= lo[:, :1]) & (ys < lo[:, :1] + size)  # (B, H)
    in_x = (xs >= lo[:, 1:]) & (xs < lo[:, 1:] + size)  # (B, W)
    return (~(in_y[:, :, None] & in_x[:, None, :]))[:, None]


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise ValueError(
            "images: expected a float tensor (B, C, H, W) in [0, 1] with C in {1, 3}, got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )

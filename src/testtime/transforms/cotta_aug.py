"""CoTTA's test-time augmentation, batched on tensors and seeded from an explicit generator.

Wang, Fink, Van Gool and Dai, "Continual Test-Time Domain Adaptation", CVPR 2022, Section 3.3:
the teacher's pseudo-label is averaged over N = 32 augmented copies of the batch when the source
model is not confident. The augmentation is the official ``get_tta_transforms`` (qinenergy/cotta,
``cifar/cotta.py``): clip to [0, 1]; colour jitter with brightness [0.6, 1.4], contrast [0.7, 1.3],
saturation [0.5, 1.5], hue [-0.06, 0.06] and gamma [0.7, 1.3], applied in a random order; edge
padding by H/2; a random affine map (rotation within +-15 degrees, translation up to 1/16 of the
padded size, scale [0.9, 1.1], bilinear, zero fill); Gaussian blur (kernel 5, sigma in
[0.001, 0.5]); centre crop back to (H, W); horizontal flip with p = 0.5; additive Gaussian noise
(std 0.005); clip to [0, 1].

As in the official code (torchvision transforms applied to a whole batch tensor), one set of random
parameters is drawn per call and shared by the batch (the noise is per pixel);
``per_image=True`` draws the factors, the affine map, the blur and the flip per image instead.
Colour operations follow torchvision's semantics (contrast blends with the mean grey level,
saturation with the grey image, hue rotates the HSV hue by a fraction of a turn); brightness,
contrast, saturation and hue are the package's :mod:`testtime.transforms.functional` ops.

Example::

    >>> import torch
    >>> from testtime.transforms.cotta_aug import cotta_augment
    >>> x = torch.rand(4, 3, 32, 32)
    >>> cotta_augment(x, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from testtime.transforms.functional import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

__all__ = [
    "CoTTAAugConfig", "adjust_brightness", "adjust_contrast", "adjust_gamma", "adjust_hue", "adjust_saturation",
    "affine", "cotta_augment", "gaussian_blur",
]


@dataclass(frozen=True)
class CoTTAAugConfig:
    """Ranges of CoTTA's augmentation (official defaults, ``soft=False``)."""

    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: tuple[float, float] = (-0.06, 0.06)
    gamma: tuple[float, float] = (0.7, 1.3)
    degrees: float = 15.0
    translate: float = 1.0 / 16.0  # fraction of the padded image size
    scale: tuple[float, float] = (0.9, 1.1)
    blur_kernel: int = 5
    blur_sigma: tuple[float, float] = (0.001, 0.5)
    hflip_p: float = 0.5
    noise_std: float = 0.005
    per_image: bool = False

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "gamma", "scale", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"CoTTAAugConfig.{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ValueError(f"CoTTAAugConfig.hue must lie in [-0.5, 0.5], got {self.hue}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"CoTTAAugConfig.blur_kernel must be odd and >= 1, got {self.blur_kernel}")
        if not 0 <= self.hflip_p <= 1 or self.noise_std < 0 or self.degrees < 0 or self.translate < 0:
            raise ValueError("CoTTAAugConfig: need 0 <= hflip_p <= 1, noise_std >= 0, degrees >= 0, translate >= 0")


def _check(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point() or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be a float tensor (B, C, H, W) with C in (1, 3), got "
                         f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _f(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)  # (B or 1, 1, 1, 1)


def adjust_gamma(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``x ** gamma``, after clamping to [1e-8, 1] as the official code does (no NaN gradients)."""
    return x.clamp(1e-8, 1.0).pow(_f(f, x)).clamp(0, 1)


def affine(
    x: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Rotate by ``angle`` degrees (counter-clockwise), scale, then translate by (tx, ty) pixels about
    the image centre; bilinear, zeros outside. Each argument is (B,) or (1,)."""
    b, _, h, w = x.shape
    a = torch.deg2rad(angle.to(torch.float64))
    cos, sin = torch.cos(a), torch.sin(a)
    s = scale.to(torch.float64)
    # Output pixel -> input pixel (normalised coords, align_corners=False): p_in = (R S)^-1 (p_out - t).
    # A counter-clockwise rotation on screen (y down) is a clockwise one in (x, y): R = [[c, s], [-s, c]].
    inv = torch.stack([torch.stack([cos / s, -sin / s * h / w], -1),
                       torch.stack([sin / s * w / h, cos / s], -1)], -2)  # (n, 2, 2)
    t = torch.stack([tx.to(torch.float64) * 2 / w, ty.to(torch.float64) * 2 / h], -1)  # (n, 2)
    theta = torch.cat([inv, -(inv @ t.unsqueeze(-1))], -1)  # (n, 2, 3)
    theta = theta.expand(b, 2, 3).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's), one sigma per image or shared."""
    half = (kernel - 1) / 2
    r = torch.linspace(-half, half, kernel, dtype=torch.float64)
    k = torch.exp(-0.5 * (r.view(1, -1) / sigma.to(torch.float64).view(-1, 1)) ** 2)  # (n, k)
    k = (k / k.sum(1, keepdim=True)).to(device=x.device, dtype=x.dtype)
    b, c, h, w = x.shape
    k = k.expand(b, kernel).repeat_interleave(c, 0)  # (B*C, k)
    y = F.pad(x.reshape(1, b * c, h, w), (kernel // 2,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def cotta_augment(x: torch.Tensor, g: torch.Generator, cfg: CoTTAAugConfig | None = None) -> torch.Tensor:
    """One CoTTA augmentation of the batch ``x`` (B, C, H, W) in [0, 1]; same shape, in [0, 1].

    Draws come from ``g`` (a CPU ``torch.Generator``), so the same generator state gives the same output.
    """
    _check(x)
    cfg = cfg or CoTTAAugConfig()
    b, _, h, w = x.shape
    n = b if cfg.per_image else 1
    x = x.clamp(0, 1)
    ops = {0: (adjust_brightness, cfg.brightness), 1: (adjust_contrast, cfg.contrast),
           2: (adjust_saturation, cfg.saturation), 3: (adjust_hue, cfg.hue), 4: (adjust_gamma, cfg.gamma)}
    for k in torch.randperm(5, generator=g).tolist():
        fn, (lo, hi) = ops[k]
        x = fn(x, _uniform(n, lo, hi, g).to(x.device))  # factors (B or 1,)
    ph, pw = h // 2, w // 2
    x = F.pad(x, (pw, pw, ph, ph), mode="replicate")  # (B, C, 2H, 2W), edge padding
    hh, ww = x.shape[-2:]
    angle = _uniform(n, -cfg.degrees, cfg.degrees, g)
    tx = torch.round(_uniform(n, -cfg.translate * ww, cfg.translate * ww, g))
    ty = torch.round(_uniform(n, -cfg.translate * hh, cfg.translate * hh, g))
    scale = _uniform(n, cfg.scale[0], cfg.scale[1], g)
    x = affine(x, angle, tx, ty, scale)
    x = gaussian_blur(x, cfg.blur_kernel, _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], g))
    x = x[:, :, ph:ph + h, pw:pw + w]  # centre crop back to (H, W)
    flip = (torch.rand(n, generator=g) < cfg.hflip_p).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=g).to(device=x.device, dtype=x.dtype)
    return x.clamp(0, 1)



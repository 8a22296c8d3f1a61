"""AugMix views of one image, as MEMO uses them, batched on tensors and seeded from a generator.

Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and Uncertainty",
ICLR 2020; as used by MEMO (Zhang, Levine and Finn, NeurIPS 2022; official code zhangmarvin/memo,
``cifar-10-exps/utils/third_party.py``). One view of an image x:

1. pre-augment: random crop with 4 pixels of zero padding, random horizontal flip -> x0;
2. three chains, each of 1 to 3 operations drawn uniformly from autocontrast, equalize, rotate,
   solarize, shear_x, shear_y, translate_x, translate_y, posterize, applied to x0;
3. ``view = m * x0 + (1 - m) * sum_i w_i chain_i(x0)`` with w ~ Dirichlet(1, 1, 1), m ~ Beta(1, 1)
   (MEMO's order of m; the AugMix paper writes it the other way round, the law is the same).

Severity 1 (MEMO's CIFAR setting) gives magnitudes drawn from ``level ~ U(0.1, 1)``: rotation
``int(3 level)`` degrees, solarize threshold ``256 - int(25.6 level)``, shear ``0.03 level``,
translation ``int(level * S / 30)`` pixels (S = image size), posterize to 4 bits; random signs.
How closely this matches the official operations (PIL on 8-bit images):

- autocontrast, equalize, solarize, posterize: PIL's lookup tables, byte for byte (tested).
- rotate, shear, translate: PIL's ``transform(AFFINE, BILINEAR, fillcolor=128)``: sample points
  outside the image take the fill, points inside are bilinear with edge clamping, and the result
  is truncated to 8 bits as PIL's ``(UINT8)`` cast does (not rounded). The fill is the official
  one: ``fillcolor=128`` on an RGB image is the packed colour (128, 0, 0), a dark red, not grey
  (a grey image gets 128). Integer translations are byte for byte; sub-pixel shears and rotations
  agree with PIL except within one level where the bilinear value is an integer up to float
  round-off (PIL's compiled arithmetic may land just below it; about 2% of pixels in the tests).
- the input image is rounded to 8 bits first (the official code starts from a uint8 PIL image).

Example::

    >>> import torch
    >>> from testtime.transforms.augmix import augmix_views
    >>> views = augmix_views(torch.rand(3, 32, 32), 32, torch.Generator().manual_seed(0))
    >>> views.shape
    torch.Size([32, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPS = ("autocontrast", "equalize", "rotate", "solarize", "shear_x", "shear_y", "translate_x", "translate_y",
       "posterize")


@dataclass(frozen=True)
class AugMixConfig:
    """MEMO's CIFAR AugMix settings (zhangmarvin/memo ``utils/third_party.py``)."""

    severity: float = 1.0  # the ``level`` passed to every operation (MEMO: 1)
    width: int = 3  # chains mixed per view
    depth: tuple[int, int] = (1, 3)  # operations per chain, uniform in [lo, hi]
    alpha: float = 1.0  # Dirichlet(alpha, ...) chain weights and Beta(alpha, alpha) mixing
    crop_padding: int = 4  # pre-augment random crop padding (0: no crop)
    flip: bool = True  # pre-augment random horizontal flip
    # fill of the geometric operations, per channel: the official fillcolor=128 on an RGB image is
    # (128, 0, 0); a one-channel image takes the first value
    fill: tuple[float, ...] = (128 / 255, 0.0, 0.0)
    ops: tuple[str, ...] = OPS

    def __post_init__(self) -> None:
        bad = sorted(set(self.ops) - set(OPS))
        if bad or not self.ops:
            raise ValueError(f"AugMixConfig.ops: unknown operation(s) {bad}; valid: {list(OPS)}")
        if self.width < 1 or not 1 <= self.depth[0] <= self.depth[1] or self.alpha <= 0 or self.severity <= 0.1:
            raise ValueError("AugMixConfig: need width >= 1, 1 <= depth[0] <= depth[1], alpha > 0, severity > 0.1; "
                             f"got width={self.width}, depth={self.depth}, alpha={self.alpha}, "
                             f"severity={self.severity}")
        fill = (self.fill,) if isinstance(self.fill, (int, float)) else tuple(self.fill)
        if not fill or not all(0 <= float(v) <= 1 for v in fill):
            raise ValueError(f"AugMixConfig.fill: one value or one per channel, each in [0, 1]; got {self.fill!r}")


def _q(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid (values k / 255)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def _u8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255).long()


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0) per channel: stretch [min, max] to [0, 255]."""
    v = _u8(x)  # (N, C, H, W)
    lo = v.amin(dim=(2, 3), keepdim=True)
    hi = v.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp_min(1).to(torch.float64)
    out = torch.trunc(v * scale - lo * scale).clamp(0, 255)  # PIL: int(ix * scale + offset), in float64
    return torch.where(hi > lo, out, v.to(out.dtype)).to(x.dtype) / 255


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel: the histogram-equalising lookup table of PIL."""
    n, c, h, w = x.shape
    v = _u8(x).reshape(n * c, h * w)  # (NC, HW)
    hist = torch.zeros(n * c, 256, dtype=torch.long).scatter_add_(1, v, torch.ones_like(v))  # (NC, 256)
    idx = torch.arange(256).expand_as(hist)
    last = torch.where(hist > 0, idx, torch.full_like(idx, -1)).amax(1, keepdim=True)  # last non-empty bin
    step = (h * w - hist.gather(1, last.clamp_min(0))) // 255  # (NC, 1)
    before = torch.cumsum(hist, 1) - hist  # pixels strictly below each value
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)  # (NC, 256)
    lut = torch.where(step > 0, lut, idx)  # step 0: PIL leaves the band unchanged
    return lut.gather(1, v).reshape(n, c, h, w).to(x.dtype) / 255


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.solarize``: values >= threshold (0..256, per image) become 255 - value."""
    v = _u8(x)
    t = threshold.view(-1, 1, 1, 1)
    return torch.where(v >= t, 255 - v, v).to(x.dtype) / 255


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.posterize``: keep the ``bits`` (per image) most significant bits."""
    v = _u8(x)
    mask = (255 - (2 ** (8 - bits.view(-1, 1, 1, 1)) - 1)).long()
    return (v & mask).to(x.dtype) / 255


def _fill_values(fill: float | tuple[float, ...], c: int) -> list[float]:
    """The fill of ``c`` channels: a scalar for all, a tuple per channel (one channel: its first value)."""
    values = [float(fill)] if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if c == 1 or len(values) == 1:
        return values[:1] * c
    if len(values) != c:
        raise ValueError(f"fill: {len(values)} values for an image with {c} channels")
    return values


def pil_affine(x: torch.Tensor, coeffs: torch.Tensor, fill: float | tuple[float, ...]) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor)`` on 8-bit images.

    Output pixel (x, y) samples the input at ``(a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f)``
    (PIL's pixel-centre convention). A point outside ``[0, W) x [0, H)`` takes ``fill`` (per channel,
    see :func:`_fill_values`); a point inside is bilinear between the nearest pixel centres with edge
    clamping, and the result is truncated to 8 bits as PIL's ``(UINT8)`` cast does.
    ``x``: (N, C, H, W) in [0, 1] on the 8-bit grid; ``coeffs``: (N, 6). Returns (N, C, H, W).
    """
    n, ch, h, w = x.shape
    a, b, c, d, e, f = (t.view(-1, 1, 1) for t in coeffs.to(torch.float64).unbind(1))  # (N, 1, 1) each
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")  # (H, W)
    xin, yin = a * xs + b * ys + c, d * xs + e * ys + f  # (N, H, W) input coordinates
    inside = ((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)).unsqueeze(1)  # (N, 1, H, W)
    # grid_sample's align_corners=False coordinate of the input point xin is 2 xin / W - 1
    grid = torch.stack([2 * xin / w - 1, 2 * yin / h - 1], dim=-1)  # (N, H, W, 2)
    v = torch.round(x.to(torch.float64).clamp(0, 1) * 255)
    out = F.grid_sample(v, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = torch.floor(out + 1e-9)  # PIL's (UINT8) cast of a value in [0, 255]
    fill_v = torch.tensor(_fill_values(fill, ch), dtype=torch.float64).view(1, ch, 1, 1) * 255
    out = torch.where(inside, out, torch.round(fill_v))
    return (out / 255).to(x.dtype)


def _rotation_coeffs(deg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL ``Image.rotate(deg)`` (counter-clockwise, about the centre) as affine coefficients."""
    t = torch.deg2rad(deg.to(torch.float64))
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2, h / 2
    # input = R^T (output - centre) + centre, R the on-screen counter-clockwise rotation (y down).
    return torch.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy], 1)


def _level(n: int, severity: float, g: torch.Generator) -> torch.Tensor:
    """AugMix's ``rand_lvl``: U(0.1, severity), float64."""
    return 0.1 + (severity - 0.1) * torch.rand(n, generator=g, dtype=torch.float64)


def _sign(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=g) > 0.5, -1.0, 1.0).to(torch.float64)


def apply_op(name: str, x: torch.Tensor, cfg: AugMixConfig, g: torch.Generator) -> torch.Tensor:
    """One AugMix operation on every image of ``x`` (N, C, H, W), magnitudes drawn per image."""
    n, _, h, w = x.shape
    lvl = _level(n, cfg.severity, g)
    zero = torch.zeros(n, dtype=torch.float64)
    one = torch.ones(n, dtype=torch.float64)
    if name == "autocontrast":
        return autocontrast(x)
    if name == "equalize":
        return equalize(x)
    if name == "solarize":
        return solarize(x, 256 - torch.floor(lvl * 256 / 10).long())
    if name == "posterize":
        return posterize(x, 4 - torch.floor(lvl * 4 / 10).long())
    if name == "rotate":
        deg = torch.floor(lvl * 30 / 10) * _sign(n, g)
        return pil_affine(x, _rotation_coeffs(deg, h, w), cfg.fill)
    if name in ("shear_x", "shear_y"):
        s = lvl * 0.3 / 10 * _sign(n, g)
        coeffs = (torch.stack([one, s, zero, zero, one, zero], 1) if name == "shear_x"
                  else torch.stack([one, zero, zero, s, one, zero], 1))
        return pil_affine(x, coeffs, cfg.fill)
    if name in ("translate_x", "translate_y"):
        size = w if name == "translate_x" else h
        t = torch.floor(lvl * (size / 3) / 10) * _sign(n, g)
        coeffs = (torch.stack([one, zero, t, zero, one, zero], 1) if name == "translate_x"
                  else torch.stack([one, zero, zero, zero, one, t], 1))
        return pil_affine(x, coeffs, cfg.fill)
    raise ValueError(f"unknown AugMix operation {name!r}; valid: {list(OPS)}")


def _preaugment(x: torch.Tensor, n: int, cfg: AugMixConfig, g: torch.Generator) -> torch.Tensor:
    """n copies of one image (C, H, W), each randomly cropped (zero padding) and flipped."""
    c, h, w = x.shape
    out = x.unsqueeze(0).expand(n, c, h, w)  # (n, C, H, W)
    p = cfg.crop_padding
    if p > 0:
        padded = F.pad(x, (p, p, p, p))  # (C, H + 2p, W + 2p)
        off = torch.randint(0, 2 * p + 1, (n, 2), generator=g)
        out = torch.stack([padded[:, i:i + h, j:j + w] for i, j in off.tolist()])
    if cfg.flip:
        flip = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1)
        out = torch.where(flip, out.flip(-1), out)
    return out.contiguous()


def augmix_views(image: torch.Tensor, n: int, g: torch.Generator, cfg: AugMixConfig | None = None) -> torch.Tensor:
    """``n`` AugMix views of one image (C, H, W) or (1, C, H, W) in [0, 1] -> (n, C, H, W) in [0, 1]."""
    cfg = cfg or AugMixConfig()
    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        raise ValueError(f"augmix_views: image must be one float image (C, H, W) or (1, C, H, W) in [0, 1], got "
                         f"{getattr(image, 'dtype', type(image))} {tuple(getattr(image, 'shape', ()))}")
    if n < 1:
        raise ValueError(f"augmix_views: n must be >= 1, got {n}")
    x0 = _q(_preaugment(image.detach().cpu().float(), n, cfg, g))  # (n, C, H, W)
    k = cfg.width
    # Dirichlet and Beta through Gamma draws from our generator (torch.distributions takes none):
    # w_i = G_i / sum_j G_j with G_i ~ Gamma(alpha, 1); m = G_a / (G_a + G_b).
    gam = torch._standard_gamma(torch.full((n, k + 2), cfg.alpha, dtype=torch.float64), generator=g)
    weights = gam[:, :k] / gam[:, :k].sum(1, keepdim=True)  # (n, k)
    m = gam[:, k] / (gam[:, k] + gam[:, k + 1])  # (n,)
    chains = x0.repeat(k, 1, 1, 1)  # (k * n, C, H, W): chain i of view j at row i * n + j
    depth = torch.randint(cfg.depth[0], cfg.depth[1] + 1, (k * n,), generator=g)
    for step in range(cfg.depth[1]):
        op = torch.randint(0, len(cfg.ops), (k * n,), generator=g)
        for oi, name in enumerate(cfg.ops):
            rows = torch.nonzero((op == oi) & (depth > step)).flatten()
            if rows.numel():
                chains[rows] = apply_op(name, chains[rows], cfg, g)
    mix = (weights.T.to(x0.dtype).reshape(k, n, 1, 1, 1) * chains.reshape(k, n, *x0.shape[1:])).sum(0)  # (n, C, H, W)
    mm = m.to(x0.dtype).view(-1, 1, 1, 1)
    return (mm * x0 + (1 - mm) * mix).clamp(0, 1).to(image.device, image.dtype)

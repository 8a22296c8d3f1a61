"""Weather family: snow, frost, fog, spatter.

Hendrycks & Dietterich, ICLR 2019 (``hendrycks/robustness``, ``ImageNet-C/create_c``).
All functions map float (N, C, H, W) in [0, 1] to (N, C, H, W).
"""

from __future__ import annotations

import torch

from testtime.corruptions import _ops
from testtime.corruptions.frost import frost_textures
from testtime.corruptions.params import ParamSet
from testtime.corruptions.registry import CORRUPTIONS, Context


@CORRUPTIONS.register("snow", family="weather", random=True, rgb=False)
def snow(x: torch.Tensor, p: tuple, ctx: Context) -> torch.Tensor:
    """Snow flakes: a thresholded, zoomed Gaussian layer streaked by ImageMagick's motion blur.

    p = (loc, scale, zoom, threshold, blur radius, blur sigma, blend). The layer
    ``N(loc, scale^2)`` (one per image, H x W) is clipped-zoomed, zeroed below ``threshold``,
    stored as 8-bit, motion-blurred at an angle ~ U(-135, -45) and stored as 8-bit again (as
    ImageMagick's PNG writer does, :func:`~testtime.corruptions._ops.imagemagick_png8`).
    The image is whitened ``blend * x + (1 - blend) * max(x, 1.5 * gray(x) + 0.5)`` and the layer
    is added twice (as is and rotated by 180 degrees).
    """
    loc, scale, zoom, thr, radius, sigma, blend = p
    n, c, h, w = x.shape
    layer = ctx.rng.normal((n, 1, h, w), loc, scale)
    layer = _ops.clipped_zoom(layer, float(zoom))
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255  # astype(uint8) before the PNG round trip
    angles = ctx.rng.uniform((n,), -135.0, -45.0, dtype=torch.float64)
    layer = _ops.motion_blur(layer, float(radius), float(sigma), angles)
    layer = _ops.imagemagick_png8(layer)  # ImageMagick writes an 8-bit PNG: floor(round(65535 y) / 257)
    gray = _ops.rgb_to_gray(x) if c == 3 else x
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(2, 3))


def check_frost_size(pset: ParamSet, h: int, w: int) -> None:
    """ValueError unless every frost photograph, scaled for ``pset``, is larger than h x w."""
    for t in frost_textures(pset.frost_scale):
        if t.shape[0] <= h or t.shape[1] <= w:
            raise ValueError(
                f"images: {h}x{w} is too large for frost with parameter set {pset.name!r} "
                f"(texture {t.shape[0]}x{t.shape[1]} after scaling by {pset.frost_scale})"
            )


@CORRUPTIONS.register("frost", family="weather", random=True, rgb=True)
def frost(x: torch.Tensor, p: tuple[float, float], ctx: Context) -> torch.Tensor:
    """``p[0] * x + p[1] * frost``, frost a random crop of one of the five frost photographs.

    The photographs are resized by the parameter set's ``frost_scale`` (OpenCV bilinear), one
    is drawn per image (uniform over the first five, as ``np.random.randint(5)``), then a crop
    position uniform over the valid range.
    """
    n, _, h, w = x.shape
    check_frost_size(ctx.pset, h, w)
    textures = frost_textures(ctx.pset.frost_scale)
    which = ctx.rng.randint(0, len(textures), (n,)).cpu()
    u = ctx.rng.uniform((n, 2), 0.0, 1.0, dtype=torch.float64).cpu()
    layer = torch.empty(n, 3, h, w, dtype=x.dtype, device=x.device)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    for k, tex in enumerate(textures):
        sel = torch.nonzero(which == k).flatten()
        if len(sel) == 0:
            continue
        top = torch.floor(u[sel, 0] * (tex.shape[0] - h)).long()  # randint(0, Ht - h)
        left = torch.floor(u[sel, 1] * (tex.shape[1] - w)).long()
        rr = (top[:, None, None] + ar_h[None, :, None]).expand(-1, h, w)  # (n_k, H, W)
        cc = (left[:, None, None] + ar_w[None, None, :]).expand(-1, h, w)
        crops = tex[rr, cc]  # (n_k, H, W, 3) uint8
        layer[sel.to(x.device)] = crops.permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255
    return p[0] * x + p[1] * layer


@CORRUPTIONS.register("fog", family="weather", random=True, rgb=False)
def fog(x: torch.Tensor, p: tuple[float, float], ctx: Context) -> torch.Tensor:
    """``(x + s * plasma) * m / (m + s)``, plasma a diamond-square fractal (p = (s, wibble decay)).

    m is the image's maximum; the map side is the parameter set's (32 / 64 / 256), or the
    next power of two covering the image, cropped to the image.
    """
    strength, decay = float(p[0]), float(p[1])
    n, _, h, w = x.shape
    size = ctx.pset.plasma_size
    while size < max(h, w):
        size *= 2
    pl = _ops.plasma_fractal(n, size, decay, ctx.rng)[:, None, :h, :w].to(x.dtype)  # (N, 1, H, W)
    m = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * pl) * m / (m + strength)


_WATER = (175 / 255.0, 238 / 255.0, 238 / 255.0)
_MUD = (63 / 255.0, 42 / 255.0, 20 / 255.0)
_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)


@CORRUPTIONS.register("spatter", family="weather", random=True, rgb=True)
def spatter(x: torch.Tensor, p: tuple, ctx: Context) -> torch.Tensor:
    """Water drops (mode 0) or mud (mode 1). p = (loc, scale, sigma, threshold, intensity, mode).

    A liquid layer ``gaussian(N(loc, scale^2), sigma)`` zeroed below ``threshold`` (one per image).
    Water: the layer's 8-bit Canny edges (50, 150), their chamfer distance transform capped at 20,
    3x3 box blur, histogram equalisation, an emboss filter, another box blur; the product with
    the 8-bit layer, normalised to its maximum and scaled by ``intensity``, adds pale turquoise
    (175, 238, 238). Mud: the mask ``layer > threshold`` blurred with sigma ``intensity``, zeroed
    below 0.8, blends towards brown (63, 42, 20).
    """
    loc, scale, sigma, thr, inten, mode = p
    n, _, h, w = x.shape
    liquid = ctx.rng.normal((n, 1, h, w), loc, scale).to(torch.float64)
    liquid = _ops.gaussian_filter(liquid, float(sigma), truncate=4.0, mode="edge")
    liquid = torch.where(liquid < thr, torch.zeros_like(liquid), liquid)
    if int(mode) == 0:
        l8 = torch.remainder(torch.floor(liquid * 255), 256)  # (liquid * 255).astype(np.uint8)
        edges = _ops.canny(l8, 50.0, 150.0)
        dist = _ops.distance_transform(edges, 20.0)  # 255 - edges is 0 exactly on edges
        # blur (OpenCV sums float32 input in double, scales, stores float32), then astype(uint8)
        dist = torch.floor(_ops.box3(dist.to(torch.float64)).to(torch.float32)).to(torch.float64)
        dist = _ops.equalize_hist(dist)
        dist = _ops.cv_round(_ops.correlate2d(dist, _EMBOSS, "reflect101"))  # filter2D(CV_8U)
        dist = _ops.cv_round(_ops.box3(dist))  # blur on uint8
        m = l8 * dist  # the generator has rebound liquid_layer to its uint8 version here
        mx = m.amax(dim=(1, 2, 3), keepdim=True)
        m = torch.where(mx > 0, m / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(m)) * inten
        color = torch.tensor(_WATER, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x + m.to(x.dtype) * color
    mask = (liquid > thr).to(torch.float64)
    mask = _ops.gaussian_filter(mask, float(inten), truncate=4.0, mode="edge")
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask).to(x.dtype)
    color = torch.tensor(_MUD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * (1 - mask) + color * mask

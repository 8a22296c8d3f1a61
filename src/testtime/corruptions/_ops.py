"""Batched tensor building blocks shared by the corruption families.

All image tensors here are float (N, C, H, W) in [0, 1] on any device. Border modes are named
after their definition, with the library that uses each name:

* ``"reflect101"``: ``dcb|abcd|cba`` (OpenCV ``BORDER_REFLECT_101``, torch ``reflect``)
* ``"symmetric"``:  ``cba|abcd|dcb`` (SciPy / scikit-image ``reflect``)
* ``"edge"``:       ``aaa|abcd|ddd`` (SciPy ``nearest``, ImageMagick's default virtual pixels)

Example::

    >>> x = torch.rand(2, 3, 8, 8)
    >>> gaussian_filter(x, 1.0, truncate=4.0, mode="edge").shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

BORDER_MODES = ("reflect101", "symmetric", "edge")


class Rng:
    """Random draws from one explicit ``torch.Generator``, returned on ``device``.

    Draws are made on the generator's own device (CPU by default) and then moved, so a CPU
    generator gives the same numbers whether the images live on CPU or CUDA.
    """

    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self.gen = generator
        self.device = device

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype=torch.float32) -> torch.Tensor:
        t = torch.rand(shape, generator=self.gen, device=self.gen.device, dtype=dtype)
        return self._to(t * (high - low) + low)

    def normal(self, shape: tuple[int, ...], loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
        t = torch.randn(shape, generator=self.gen, device=self.gen.device, dtype=torch.float32)
        return self._to(t * scale + loc)

    def randint(self, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Integers in [low, high) (``high`` excluded, like ``np.random.randint``)."""
        return self._to(torch.randint(low, high, shape, generator=self.gen, device=self.gen.device))

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return self._to(torch.poisson(rates.to(self.gen.device), generator=self.gen))


# ----------------------------------------------------------------------------- borders and filters


def map_index(i: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map (possibly out-of-range) integer indices ``i`` into [0, n) by border ``mode``."""
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode not in ("symmetric", "reflect101"):
        raise ValueError(f"mode: unknown border mode {mode!r}; valid: {', '.join(BORDER_MODES)}")
    if i.numel() and int(i.min()) >= -n and int(i.max()) < 2 * n:  # within one reflection: a lookup table
        return _index_table(n, mode, i.device)[i + n]
    if mode == "symmetric":
        m = torch.remainder(i, 2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    m = torch.remainder(i, 2 * n - 2)
    return torch.where(m < n, m, 2 * n - 2 - m)


@lru_cache(maxsize=64)
def _index_table_cpu(n: int, mode: str) -> torch.Tensor:
    i = torch.arange(-n, 2 * n)
    if mode == "symmetric":
        m = torch.remainder(i, 2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    m = torch.remainder(i, 2 * n - 2)
    return torch.where(m < n, m, 2 * n - 2 - m)


def _index_table(n: int, mode: str, device: torch.device) -> torch.Tensor:
    return _index_table_cpu(n, mode).to(device)


def pad2d(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad (N, C, H, W) by ``ph`` rows and ``pw`` columns on each side, any pad size."""
    _, _, h, w = x.shape
    rows = map_index(torch.arange(-ph, h + ph, device=x.device), h, mode)
    cols = map_index(torch.arange(-pw, w + pw, device=x.device), w, mode)
    return x.index_select(2, rows).index_select(3, cols)


@lru_cache(maxsize=256)
def _filter_matrix(n: int, taps: tuple[float, ...], mode: str) -> torch.Tensor:
    """(n, n) float64 matrix A such that ``A @ v`` is the same-size correlation of v with ``taps``
    (odd length), the border ``mode`` folded in (out-of-range taps land on their mapped index)."""
    r = len(taps) // 2
    a = torch.zeros(n, n, dtype=torch.float64)
    src = map_index(torch.arange(-r, n + r), n, mode).tolist()
    for o in range(n):
        for j, kj in enumerate(taps):
            a[o, src[o + j]] += kj
    return a


def filter_matrix(n: int, taps: torch.Tensor, mode: str, like: torch.Tensor) -> torch.Tensor:
    """:func:`_filter_matrix` on ``like``'s device and dtype."""
    key = tuple(float(t) for t in taps.tolist())
    return _filter_matrix(n, key, mode).to(device=like.device, dtype=like.dtype)


def separable(x: torch.Tensor, k_rows: torch.Tensor, k_cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate (N, C, H, W) with ``k_rows`` along H and ``k_cols`` along W (odd lengths), borders by ``mode``.

    Computed as ``A_h @ x @ A_w^T`` with banded matrices holding the kernel and the border rule.
    """
    n, c, h, w = x.shape
    a_h = filter_matrix(h, k_rows, mode, x)
    a_w = filter_matrix(w, k_cols, mode, x)
    y = (x.reshape(-1, w) @ a_w.T).reshape(n, c, h, w)  # along W, one 2-D GEMM
    return (y.transpose(2, 3).reshape(-1, h) @ a_h.T).reshape(n, c, w, h).transpose(2, 3)  # along H


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Same-size 2-D correlation of every channel of (N, C, H, W) with one (kh, kw) kernel (odd sides).

    The kernel is split by SVD into separable rank-1 terms (exact up to float round-off), each
    applied with :func:`separable`.
    """
    u, sv, vh = torch.linalg.svd(kernel.to(torch.float64))
    out = torch.zeros_like(x)
    for r in range(len(sv)):
        if sv[r] <= sv[0] * 1e-12:
            break
        out = out + separable(x, u[:, r] * sv[r], vh[r], mode)
    return out


@lru_cache(maxsize=64)
def gaussian_kernel1d(sigma: float, truncate: float) -> torch.Tensor:
    """SciPy's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    if sigma <= 0:
        return torch.ones(1, dtype=torch.float64)
    radius = int(truncate * float(sigma) + 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 * xs**2 / float(sigma) ** 2)
    return phi / phi.sum()


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "edge") -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` over H and W of (N, C, H, W) (what skimage's ``gaussian`` calls)."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(float(sigma), float(truncate))
    return separable(x, k, k, mode)


def cv2_gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV ``getGaussianKernel(ksize, sigma)`` for sigma > 0 (float64)."""
    xs = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
    k = np.exp(-(xs**2) / (2.0 * sigma * sigma))
    return k / k.sum()


@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The anti-aliased disk of the published ``defocus_blur`` (float32, cropped to its support).

    A 17 x 17 (or 2r+1) binary disk ``X^2 + Y^2 <= r^2`` normalised to sum 1, then blurred by
    OpenCV's 3 x 3 (5 x 5 when r > 8) Gaussian of sigma ``alias_blur`` (border reflect-101).
    Zero rows/columns are cropped, which does not change a correlation.
    """
    if radius <= 8:
        ls, ks = np.arange(-8, 9), 3
    else:
        ls, ks = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(ls, ls)
    d = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    d /= d.sum()
    g = cv2_gaussian_kernel1d(ks, alias_blur)
    t = torch.from_numpy(d.astype(np.float64))[None, None]  # (1, 1, K, K)
    t = separable(t, torch.from_numpy(g), torch.from_numpy(g), "reflect101")[0, 0].float()
    nz = torch.nonzero(t)
    r0, r1 = int(nz[:, 0].min()), int(nz[:, 0].max())
    c0, c1 = int(nz[:, 1].min()), int(nz[:, 1].max())
    # keep the crop centred so that the kernel centre stays at the middle
    k = t.shape[0] // 2
    half = max(k - r0, r1 - k, k - c0, c1 - k)
    return t[k - half : k + half + 1, k - half : k + half + 1].contiguous()


# ----------------------------------------------------------------------------- sampling


def sample_bilinear(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear samples of (N, C, H, W) at per-image coordinates ``ys``/``xs`` (N, H', W').

    Coordinates are in pixels (0 = centre of the first pixel); neighbours outside the image
    are mapped by the border ``mode`` (like ``scipy.ndimage.map_coordinates(order=1)``).
    Returns (N, C, H', W').
    """
    n, c, h, w = x.shape
    y0f, x0f = torch.floor(ys), torch.floor(xs)
    wy, wx = (ys - y0f).to(x.dtype)[:, None], (xs - x0f).to(x.dtype)[:, None]  # (N, 1, H', W')
    y0, x0 = y0f.long(), x0f.long()
    r0, r1 = map_index(y0, h, mode) * w, map_index(y0 + 1, h, mode) * w  # row offsets (N, H', W')
    c0, c1 = map_index(x0, w, mode), map_index(x0 + 1, w, mode)
    flat = x.reshape(n, c, h * w)  # (N, C, HW)
    out_hw = ys.shape[1:]

    def tap(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        idx = (rows + cols).reshape(n, 1, -1)  # (N, 1, H'W')
        return flat.gather(2, idx.expand(n, c, idx.shape[-1])).reshape(n, c, *out_hw)

    top = torch.lerp(tap(r0, c0), tap(r0, c1), wx)
    bottom = torch.lerp(tap(r1, c0), tap(r1, c1), wx)
    return torch.lerp(top, bottom, wy)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The generators' ``clipped_zoom``: centre crop of ceil(H / z), zoom back, centre trim to H.

    The zoom is ``scipy.ndimage.zoom(order=1)``, i.e. bilinear with corner-aligned grids and an
    output side of ``round(crop * z)``. (N, C, H, W) -> (N, C, H, W).
    """
    _, _, h, w = x.shape
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[:, :, top : top + ch, left : left + cw]
    oh, ow = int(round(ch * factor)), int(round(cw * factor))
    if (oh, ow) != (ch, cw):
        crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return crop[:, :, th : th + h, tw : tw + w]


# ----------------------------------------------------------------------------- colour


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``rgb2hsv`` on (N, 3, H, W); h, s, v in [0, 1] (ties: blue > green > red)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(dim=1).values
    delta = v - x.min(dim=1).values
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    s = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    return torch.stack((h, s, v), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``hsv2rgb`` on (N, 3, H, W), in its branch-free form.

    Channel n in (5, 3, 1) for (r, g, b): ``v - v * s * clip(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 h) mod 6``: the values of scikit-image's sector table (p, q, t, v).
    """
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + h * 6, 6)  # (N, 3, H, W)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (OpenCV ``COLOR_RGB2GRAY``): (N, 3, H, W) -> (N, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- ImageMagick motion blur


def motion_kernel(radius: float, sigma: float) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage``'s one-sided Gaussian: ``2 * ceil(radius) + 1`` taps.

    ``k[i] = exp(-i^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``, i = 0..width-1, normalised to sum 1
    (``GetOptimalKernelWidth1D`` gives the width; MagickCore/effect.c).
    """
    width = int(2 * math.ceil(radius) + 1) if radius > 1e-12 else 3
    sig = max(abs(float(sigma)), 1e-12)
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i * i) / (2.0 * sig * sig)) / (math.sqrt(2 * math.pi) * sig)
    return k / k.sum()


def motion_offsets(width: int, angles_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image tap offsets of ImageMagick's motion blur: (dx, dy), each (N, width), int64.

    ``point = width * (sin a, cos a)``; tap i samples the pixel at
    ``x + ceil(i * point.y / |point| - 0.5)``, ``y + ceil(i * point.x / |point| - 0.5)``.
    """
    a = angles_deg.to(torch.float64) * (math.pi / 180.0)
    px, py = width * torch.sin(a), width * torch.cos(a)  # (N,)
    hyp = torch.hypot(px, py)
    i = torch.arange(width, dtype=torch.float64, device=a.device)[None]  # (1, width)
    dx = torch.ceil(i * (py / hyp)[:, None] - 0.5).long()
    dy = torch.ceil(i * (px / hyp)[:, None] - 0.5).long()
    return dx, dy


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """ImageMagick ``-motion-blur radius x sigma + angle`` on (N, C, H, W), one angle per image.

    Out-of-image taps read the nearest edge pixel (ImageMagick's default ``edge`` virtual pixel
    method). Images are sorted by their tap-offset table; each run of images sharing a table is
    blurred with shifted slices of an edge-padded copy. Returns the unquantised weighted sum.
    """
    _, _, h, w = x.shape
    k = motion_kernel(radius, sigma).tolist()
    width = len(k)
    dx, dy = motion_offsets(width, angles_deg.cpu())  # (N, width) each
    tables, inverse = torch.unique(torch.cat((dx, dy), dim=1), dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(tables)).tolist()
    pad = width
    xp = F.pad(x.index_select(0, order.to(x.device)), (pad, pad, pad, pad), mode="replicate")  # sorted, padded
    out = torch.empty_like(x)
    start = 0
    for t, cnt in enumerate(counts):
        if cnt == 0:
            continue
        xs = xp[start : start + cnt]
        acc = out[start : start + cnt]  # a view: filled in place
        tdx, tdy = tables[t, :width].tolist(), tables[t, width:].tolist()
        torch.mul(xs[:, :, pad + tdy[0] : pad + tdy[0] + h, pad + tdx[0] : pad + tdx[0] + w], k[0], out=acc)
        for i in range(1, width):
            acc.add_(xs[:, :, pad + tdy[i] : pad + tdy[i] + h, pad + tdx[i] : pad + tdx[i] + w], alpha=k[i])
        start += cnt
    result = torch.empty_like(x)
    result.index_copy_(0, order.to(x.device), out)  # undo the sort
    return result


def imagemagick_png8(y: torch.Tensor) -> torch.Tensor:
    """ImageMagick 6.9 (Q16) storing a float result ``y`` (in [0, 1]) and writing it as an 8-bit PNG.

    ``ClampToQuantum`` rounds to a 16-bit quantum, ``q = floor(65535 y + 0.5)`` clamped to 0..65535,
    and the PNG writer keeps ``floor(q / 257)``: ``floor(round(65535 y) / 257)``, not ``round(255 y)``
    (``y = 0.5`` gives 127, not 128). This is the generator's ImageMagick as measured for issue 8; a
    build whose ``ScaleQuantumToChar`` rounds (``(q + 128) / 257``) would give ``round(q / 257)``.
    Returns the 8-bit values divided by 255, in ``y``'s dtype.
    """
    q = torch.floor(y.clamp(0, 1) * 65535 + 0.5)
    return torch.floor(q / 257) / 255


# ----------------------------------------------------------------------------- fog


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: Rng) -> torch.Tensor:
    """Diamond-square height maps, ``n`` at once: (n, mapsize, mapsize) in [0, 1] (float64).

    The published ``plasma_fractal``: corners start at 0, each level sets square centres and
    diamond centres to the mean of their 4 neighbours (wrapping) plus
    ``wibble * U(-wibble, wibble)``; wibble starts at 100 and is divided by ``wibbledecay``.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize: must be a power of two, got {mapsize}")
    a = torch.zeros(n, mapsize, mapsize, dtype=torch.float64, device=rng.device)
    step, wibble = mapsize, 100.0

    def jitter(shape: torch.Size) -> torch.Tensor:
        return wibble * rng.uniform(tuple(shape), -wibble, wibble, dtype=torch.float64)

    while step >= 2:
        half = step // 2
        corner = a[:, 0::step, 0::step]
        sq = corner + torch.roll(corner, -1, dims=1)
        sq = sq + torch.roll(sq, -1, dims=2)
        a[:, half::step, half::step] = sq / 4 + jitter(sq.shape)
        dr = a[:, half::step, half::step]
        ul = a[:, 0::step, 0::step]
        lt = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        a[:, 0::step, half::step] = lt / 4 + jitter(lt.shape)
        tt = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        a[:, half::step, 0::step] = tt / 4 + jitter(tt.shape)
        step //= 2
        wibble /= wibbledecay
    a = a - a.amin(dim=(1, 2), keepdim=True)
    return a / a.amax(dim=(1, 2), keepdim=True)


# ----------------------------------------------------------------------------- OpenCV pieces used by spatter


def cv_round(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``saturate_cast<uchar>``: round half to even, clamp to 0..255."""
    return torch.round(x).clamp(0, 255)


def box3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``blur(x, (3, 3))`` (normalised box, border reflect-101) on (N, C, H, W), float."""
    k = torch.full((3,), 1.0 / 3.0, dtype=torch.float64)
    return separable(x, k, k, "reflect101")


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV ``Canny(img, low, high)`` (aperture 3, L1 gradient) on 8-bit values (N, 1, H, W).

    Sobel with replicated borders, non-maximum suppression in 4 directions (OpenCV's
    tan(22.5) sectors and its > / >= tie rules), then hysteresis over 8-neighbourhoods.
    Returns a bool edge map (N, 1, H, W).
    """
    n, _, h, w = img.shape
    p = pad2d(img.to(torch.float64), 1, 1, "edge")
    dx = (p[..., :-2, 2:] + 2 * p[..., 1:-1, 2:] + p[..., 2:, 2:]) - (
        p[..., :-2, :-2] + 2 * p[..., 1:-1, :-2] + p[..., 2:, :-2]
    )
    dy = (p[..., 2:, :-2] + 2 * p[..., 2:, 1:-1] + p[..., 2:, 2:]) - (
        p[..., :-2, :-2] + 2 * p[..., :-2, 1:-1] + p[..., :-2, 2:]
    )
    mag = dx.abs() + dy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))  # magnitude outside the image is 0

    def nb(dr: int, dc: int) -> torch.Tensor:
        return mp[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

    # OpenCV's fixed-point sector test: CANNY_SHIFT = 15, TG22 = round(tan(22.5 deg) * 2^15) = 13573
    xs, ys = dx.abs(), dy.abs() * 32768.0
    tg22 = xs * 13573.0
    tg67 = tg22 + xs * 65536.0
    horiz = ys < tg22
    vert = ~horiz & (ys > tg67)
    diag = ~horiz & ~vert
    s_neg = (dx * dy) < 0  # OpenCV: s = (dx ^ dy) < 0 ? -1 : 1
    keep_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    keep_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    keep_d = torch.where(s_neg, (mag > nb(-1, 1)) & (mag > nb(1, -1)), (mag > nb(-1, -1)) & (mag > nb(1, 1)))
    maxima = (mag > low) & ((horiz & keep_h) | (vert & keep_v) | (diag & keep_d))
    strong = maxima & (mag > high)
    edges = strong
    for _ in range(h * w):
        grown = maxima & (F.max_pool2d(edges.to(torch.float32), 3, stride=1, padding=1) > 0)
        grown = grown | edges
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


_DIST_SHIFT = 16  # OpenCV distanceTransform: fixed point with 16 fractional bits


def _fix(v: float) -> int:
    """OpenCV ``CV_FLT_TO_FIX(v, 16)`` of a float32 metric: ``cvRound(v * 2^16)``."""
    return int(np.rint(np.float32(v).astype(np.float64) * (1 << _DIST_SHIFT)))


_CHAMFER5 = (
    [((dr, dc), _fix(1.0)) for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    + [((dr, dc), _fix(1.4)) for dr, dc in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    + [((dr, dc), _fix(2.1969)) for dr, dc in ((1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1), (-1, -2), (-2, -1))]
)


def distance_transform(zero: torch.Tensor, cap: float) -> torch.Tensor:
    """OpenCV ``distanceTransform(DIST_L2, 5)`` up to ``cap``: chamfer distance (a=1, b=1.4, c=2.1969).

    ``zero`` (N, 1, H, W) bool marks the source pixels (value 0 in OpenCV's input). Like OpenCV,
    the path lengths are sums of fixed-point weights (``round(w * 2^16)``) converted to float32 at
    the end. Distances are exact up to ``cap`` and saturate at ``cap`` beyond (outside the image
    is no source). Returns float32 (N, 1, H, W).
    """
    limit = int((cap + 3) * (1 << _DIST_SHIFT))
    d = torch.where(zero, 0, limit).to(torch.int32)
    _, _, h, w = d.shape
    for _ in range(int(cap) + 2):  # every move costs >= 1, so paths up to cap have <= cap moves
        dp = F.pad(d, (2, 2, 2, 2), value=limit)
        new = d
        for (dr, dc), wgt in _CHAMFER5:
            new = torch.minimum(new, dp[..., 2 + dr : 2 + dr + h, 2 + dc : 2 + dc + w] + wgt)
        if torch.equal(new, d):
            break
        d = new
    return (d.to(torch.float32) * (1.0 / (1 << _DIST_SHIFT))).clamp(max=cap)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` per image on 8-bit values (N, 1, H, W) (float holding integers)."""
    n = img.shape[0]
    v = img.reshape(n, -1).long()
    total = v.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.long, device=img.device).scatter_add_(1, v, torch.ones_like(v))
    first = (hist > 0).long().argmax(dim=1, keepdim=True)  # (N, 1)
    h_first = hist.gather(1, first)
    scale = 255.0 / (total - h_first).clamp(min=1).to(torch.float32)  # (N, 1), float32 as OpenCV
    csum = torch.cumsum(hist, dim=1) - hist.gather(1, first).expand(-1, 256).where(
        torch.arange(256, device=img.device)[None] >= first, torch.zeros_like(hist)
    )
    lut = cv_round(csum.to(torch.float32) * scale)
    lut = torch.where(torch.arange(256, device=img.device)[None] <= first, torch.zeros_like(lut), lut)
    out = lut.gather(1, v).to(img.dtype).reshape(img.shape)
    const = (h_first == total).view(n, 1, 1, 1)
    return torch.where(const, first.view(n, 1, 1, 1).to(img.dtype).expand_as(img), out)

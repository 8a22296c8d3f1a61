"""The public entry point: :func:`corrupt` one batch, and the name listings.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019: 15 benchmark corruptions and 4 held-out extras, 5 severities, with
the parameter set of the published generator for the image size (``cifar`` 32 px, ``tiny``
64 px, ``imagenet`` 224 px).

Example::

    >>> import numpy as np
    >>> from testtime.corruptions import corrupt, list_corruptions
    >>> images = np.zeros((8, 32, 32, 3), dtype=np.uint8)          # uint8 (N, H, W, C)
    >>> out = corrupt(images, "fog", 5, seed=0)                   # same form back
    >>> out.shape, out.dtype
    ((8, 32, 32, 3), dtype('uint8'))
    >>> list_corruptions("extra")
    ['speckle_noise', 'gaussian_blur', 'spatter', 'saturate']
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

# importing the families registers their functions
from testtime.corruptions import blur, digital, noise, weather  # noqa: F401
from testtime.corruptions._ops import Rng, rgb_to_gray
from testtime.corruptions.params import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    PARAM_SETS,
    PARAMS,
    SEVERITIES,
    resolve_params,
)
from testtime.corruptions.registry import CORRUPTIONS, Context

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def list_corruptions(kind: str = "all") -> list[str]:
    """Corruption names in the published order.

    Args:
        kind: ``"benchmark"`` (the 15 of CIFAR-10-C / ImageNet-C), ``"extra"`` (the 4 held-out
            ones) or ``"all"`` (the 15 then the 4).
    """
    table = {"all": ALL_CORRUPTIONS, "benchmark": BENCHMARK_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS}
    if kind not in table:
        raise ValueError(f"kind: unknown listing {kind!r}; valid: all, benchmark, extra")
    return list(table[kind])


def check_name(name: object) -> str:
    """``name`` if it is a known corruption, else a KeyError listing the valid names."""
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise KeyError(f"name: unknown corruption {name!r}; valid: {', '.join(ALL_CORRUPTIONS)}")
    return CORRUPTIONS.canonical(name)


def check_severity(severity: object) -> int:
    """``severity`` as an int in 1..5, else a ValueError."""
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or int(severity) not in SEVERITIES:
        raise ValueError(f"severity: must be an integer in 1..5, got {severity!r}")
    return int(severity)


def check_feasible(name: str, params: str, height: int, width: int) -> None:
    """Raise (before any work) if corruption ``name`` cannot run on ``height`` x ``width`` images
    with parameter set ``params`` (frost: the scaled photographs must cover the image; the frost
    files must be installed)."""
    if name == "frost":
        weather.check_frost_size(PARAM_SETS[params], height, width)


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A ``torch.Generator`` from an int seed (a new CPU generator), a generator (used as is) or None.

    ``None`` draws a seed from torch's global generator (reproducible under ``torch.manual_seed``).
    """
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed: expected an int, a torch.Generator or None, got {type(seed).__name__}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) % 2**64)
    return g


def _to_float_nchw(images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool, bool]:
    """Validate ``images``; return (float32 (N, C, H, W) in [0, 1], came_as_uint8, came_as_numpy)."""
    is_np = isinstance(images, np.ndarray)
    if not is_np and not isinstance(images, torch.Tensor):
        raise ValueError(f"images: expected a torch.Tensor or numpy array, got {type(images).__name__}")
    t = torch.from_numpy(np.ascontiguousarray(images)) if is_np else images
    if t.dtype == torch.uint8:
        if t.ndim != 4 or t.shape[-1] not in (1, 3):
            raise ValueError(
                f"images: uint8 images must be (N, H, W, C) with C in {{1, 3}}, got shape {tuple(t.shape)}"
            )
        return t.permute(0, 3, 1, 2).to(torch.float32) / 255, True, is_np
    if t.dtype in _FLOATS:
        if t.ndim != 4 or t.shape[1] not in (1, 3):
            raise ValueError(
                f"images: float images must be (N, C, H, W) with C in {{1, 3}}, got shape {tuple(t.shape)}"
            )
        if t.numel():
            if torch.isnan(t).any():
                raise ValueError("images: float input contains NaN")
            lo, hi = float(t.min()), float(t.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"images: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        return t.to(torch.float32), False, is_np
    raise ValueError(f"images: dtype must be uint8 (N, H, W, C) or float (N, C, H, W) in [0, 1], got {t.dtype}")


def corrupt(
    images: torch.Tensor | np.ndarray,
    name: str,
    severity: int,
    *,
    seed: int | torch.Generator | None = None,
    params: str | None = None,
    grey_as_rgb: bool = False,
) -> torch.Tensor | np.ndarray:
    """Apply one corruption at one severity to a whole batch.

    Args:
        images: uint8 (N, H, W, C) or float (N, C, H, W) in [0, 1], C in {1, 3}; a torch tensor
            on any device or a numpy array. The output has the same form, dtype, container and
            device. uint8 results are truncated to 8 bits as the published generators do
            (``np.uint8(x * 255)``).
        name: one of :func:`list_corruptions` (e.g. ``"gaussian_noise"``).
        severity: 1..5.
        seed: an int (a fresh CPU ``torch.Generator`` seeded with it), a ``torch.Generator``
            (draws are made on its device and moved to the images' device), or None (seed drawn
            from torch's global generator). The same seed gives the same bytes.
        params: ``"cifar"`` / ``"tiny"`` / ``"imagenet"``; default: the set published for the
            image size (32, 64, 224 px); other sizes need an explicit set.
        grey_as_rgb: with 1-channel input, repeat it to 3 channels and return 3 channels. By
            default grey images stay 1-channel (colour corruptions are applied to the repeated
            image and converted back with ITU-R 601 luma).

    Returns:
        The corrupted batch, in the input's form.

    Example::

        >>> x = torch.rand(4, 3, 32, 32)
        >>> y = corrupt(x, "motion_blur", 3, seed=torch.Generator().manual_seed(0))
        >>> y.shape
        torch.Size([4, 3, 32, 32])
    """
    name = check_name(name)
    severity = check_severity(severity)
    if params is not None and params not in PARAM_SETS:
        raise ValueError(f"params: unknown parameter set {params!r}; valid: {', '.join(PARAM_SETS)}")
    x, was_uint8, was_np = _to_float_nchw(images)
    n, c, h, w = x.shape
    pset = resolve_params(params, h, w)
    gen = make_generator(seed)
    if n == 0:
        return images.copy() if was_np else images.clone()
    fn = CORRUPTIONS.get(name)
    meta = CORRUPTIONS.meta(name)
    if c == 1 and (grey_as_rgb or meta["rgb"]):
        x = x.expand(n, 3, h, w).contiguous()
    ctx = Context(rng=Rng(gen, x.device), pset=PARAM_SETS[pset], quantized=was_uint8)
    y = fn(x, PARAMS[name][pset][severity - 1], ctx).clamp(0, 1)
    if c == 1 and not grey_as_rgb and y.shape[1] == 3:
        y = rgb_to_gray(y)
    return _from_float_nchw(y, images, was_uint8, was_np)


def _from_float_nchw(
    y: torch.Tensor, like: torch.Tensor | np.ndarray, as_uint8: bool, as_np: bool
) -> torch.Tensor | np.ndarray:
    if as_uint8:
        # the generators' np.uint8(clip(x, 0, 1) * 255) truncates; 1e-4 absorbs float32 round-off
        out = torch.floor(y * 255 + 1e-4).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    else:
        out = y.to(like.dtype if isinstance(like, torch.Tensor) else torch.from_numpy(like[:0]).dtype)
    return out.cpu().numpy() if as_np else out

"""Published corruption parameters per resolution (Hendrycks & Dietterich, ICLR 2019).

Three parameter sets, each copied from the public generator that produced the benchmark
(``hendrycks/robustness``, ``ImageNet-C/create_c/``):

========== ======= ================================ =============================
set        size    generator                        benchmark
========== ======= ================================ =============================
``cifar``     32   ``make_cifar_c.py``              CIFAR-10-C, CIFAR-100-C
``tiny``      64   ``make_tinyimagenet_c.py``       Tiny-ImageNet-C
``imagenet`` 224   ``make_imagenet_c.py``           ImageNet-C
========== ======= ================================ =============================

``PARAMS[name][set]`` is a tuple of five entries, one per severity 1..5; an entry is a float or
a tuple in the generator's own order (documented next to each corruption's implementation).

Example::

    >>> PARAMS["gaussian_noise"]["cifar"][4]   # sigma at severity 5 on 32 px images
    0.1
    >>> resolve_params(None, 32, 32)
    'cifar'
"""

from __future__ import annotations

from dataclasses import dataclass

from testtime.data.names import CORRUPTIONS_15, CORRUPTIONS_ALL, CORRUPTIONS_EXTRA
from testtime.data.names import SEVERITIES as SEVERITIES  # re-exported

# The names are defined once, in testtime.data.names (the loaders of the published sets need them too):
#: the 15 benchmark corruptions in the published order, the 4 held-out extras, all 19, severities 1..5.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS_15
EXTRA_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS_EXTRA
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS_ALL


@dataclass(frozen=True)
class ParamSet:
    """A published parameter set.

    Attributes:
        name: ``"cifar"``, ``"tiny"`` or ``"imagenet"``.
        size: the square image size the generator was written for (pixels).
        min_size: the smallest image side this set is accepted for with an explicit ``params=``.
        plasma_size: side of the diamond-square fog map (a power of two; cropped to the image).
        frost_scale: resize factor applied to the frost photographs before cropping.
    """

    name: str
    size: int
    min_size: int
    plasma_size: int
    frost_scale: float


PARAM_SETS: dict[str, ParamSet] = {
    "cifar": ParamSet("cifar", 32, 16, 32, 0.2),
    "tiny": ParamSet("tiny", 64, 32, 64, 0.3),
    "imagenet": ParamSet("imagenet", 224, 112, 256, 1.0),
}


def _z(stop: float, step: float) -> tuple[float, float, float]:
    """zoom_blur factors as ``np.arange(1, stop, step)`` arguments."""
    return (1.0, stop, step)


_E32, _E64, _E224 = 32.0, 64.0, 244.0  # elastic: IMSIZE of each generator (ImageNet-C uses 244, sic)

PARAMS: dict[str, dict[str, tuple]] = {
    # sigma of additive N(0, sigma^2)
    "gaussian_noise": {
        "cifar": (0.04, 0.06, 0.08, 0.09, 0.10),
        "tiny": (0.04, 0.08, 0.12, 0.15, 0.18),
        "imagenet": (0.08, 0.12, 0.18, 0.26, 0.38),
    },
    # photon count lambda: Poisson(x * lambda) / lambda
    "shot_noise": {
        "cifar": (500, 250, 100, 75, 50),
        "tiny": (250, 100, 50, 30, 15),
        "imagenet": (60, 25, 12, 5, 3),
    },
    # salt-and-pepper amount
    "impulse_noise": {
        "cifar": (0.01, 0.02, 0.03, 0.05, 0.07),
        "tiny": (0.01, 0.02, 0.05, 0.08, 0.14),
        "imagenet": (0.03, 0.06, 0.09, 0.17, 0.27),
    },
    # sigma of multiplicative noise x + x * N(0, sigma^2)
    "speckle_noise": {
        "cifar": (0.06, 0.1, 0.12, 0.16, 0.2),
        "tiny": (0.15, 0.2, 0.25, 0.3, 0.35),
        "imagenet": (0.15, 0.2, 0.35, 0.45, 0.6),
    },
    # Gaussian sigma (pixels)
    "gaussian_blur": {
        "cifar": (0.4, 0.6, 0.7, 0.8, 1.0),
        "tiny": (0.5, 0.75, 1.0, 1.25, 1.5),
        "imagenet": (1.0, 2.0, 3.0, 4.0, 6.0),
    },
    # (sigma, max_delta, iterations)
    "glass_blur": {
        "cifar": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "tiny": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
        "imagenet": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    },
    # (disk radius, alias_blur sigma)
    "defocus_blur": {
        "cifar": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "tiny": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
        "imagenet": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    },
    # ImageMagick MotionBlurImage (radius, sigma); angle ~ U(-45, 45)
    "motion_blur": {
        "cifar": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "tiny": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
        "imagenet": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    },
    # zoom factors np.arange(start, stop, step)
    "zoom_blur": {
        "cifar": (_z(1.06, 0.01), _z(1.11, 0.01), _z(1.16, 0.01), _z(1.21, 0.01), _z(1.26, 0.01)),
        "tiny": (_z(1.06, 0.01), _z(1.11, 0.01), _z(1.16, 0.01), _z(1.21, 0.01), _z(1.26, 0.01)),
        "imagenet": (_z(1.11, 0.01), _z(1.16, 0.01), _z(1.21, 0.02), _z(1.26, 0.02), _z(1.31, 0.03)),
    },
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": {
        "cifar": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        "tiny": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
        ),
        "imagenet": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
    },
    # (image weight, frost weight)
    "frost": {
        "cifar": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "tiny": ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),
        "imagenet": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    },
    # (fog strength, wibble decay)
    "fog": {
        "cifar": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "tiny": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
        "imagenet": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    },
    # additive shift of the HSV value channel
    "brightness": {
        "cifar": (0.05, 0.1, 0.15, 0.2, 0.3),
        "tiny": (0.1, 0.2, 0.3, 0.4, 0.5),
        "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5),
    },
    # contrast factor around the per-channel mean
    "contrast": {
        "cifar": (0.75, 0.5, 0.4, 0.3, 0.15),
        "tiny": (0.4, 0.3, 0.2, 0.1, 0.05),
        "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05),
    },
    # (alpha, sigma, affine jitter), in pixels
    "elastic_transform": {
        "cifar": tuple(
            (_E32 * a, _E32 * s, _E32 * j)
            for a, s, j in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
        ),
        "tiny": tuple(
            (_E64 * a, _E64 * s, _E64 * j)
            for a, s, j in ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03), (0.16, 0.03, 0.02))
        ),
        "imagenet": tuple(
            (_E224 * a, _E224 * s, _E224 * j)
            for a, s, j in ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
        ),
    },
    # box down-scale factor
    "pixelate": {
        "cifar": (0.95, 0.9, 0.85, 0.75, 0.65),
        "tiny": (0.9, 0.8, 0.7, 0.6, 0.5),
        "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25),
    },
    # JPEG quality
    "jpeg_compression": {
        "cifar": (80, 65, 58, 50, 40),
        "tiny": (65, 58, 50, 40, 25),
        "imagenet": (25, 18, 15, 10, 7),
    },
    # (loc, scale, sigma, threshold, intensity / mud sigma, mode 0 = water, 1 = mud)
    "spatter": {
        "cifar": (
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ),
        "tiny": (
            (0.62, 0.1, 0.7, 0.7, 0.6, 0),
            (0.65, 0.1, 0.8, 0.7, 0.6, 0),
            (0.65, 0.3, 1, 0.69, 0.6, 0),
            (0.65, 0.1, 0.7, 0.68, 0.6, 1),
            (0.65, 0.1, 0.5, 0.67, 0.6, 1),
        ),
        "imagenet": (
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ),
    },
    # (saturation factor, saturation shift)
    "saturate": {
        "cifar": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        "tiny": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)),
        "imagenet": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    },
}

_BY_SIZE = {ps.size: ps.name for ps in PARAM_SETS.values()}


def resolve_params(params: str | None, height: int, width: int) -> str:
    """The parameter-set name for images of ``height`` x ``width``.

    ``params=None`` picks the set whose generator size equals the image size (32 -> ``cifar``,
    64 -> ``tiny``, 224 -> ``imagenet``); any other size needs an explicit ``params``. An explicit
    set accepts images with both sides >= its ``min_size``.

    Raises:
        ValueError: unknown set name, a size with no published set, or an image too small.
    """
    if params is None:
        if height == width and height in _BY_SIZE:
            return _BY_SIZE[height]
        raise ValueError(
            f"params: no published parameter set for {height}x{width} images (published: "
            + ", ".join(f"{n}={p.size}px" for n, p in PARAM_SETS.items())
            + "); pass params= (CLI: --params) one of "
            + ", ".join(PARAM_SETS)
        )
    if params not in PARAM_SETS:
        raise ValueError(f"params: unknown parameter set {params!r}; valid: {', '.join(PARAM_SETS)}")
    ps = PARAM_SETS[params]
    if min(height, width) < ps.min_size:
        raise ValueError(
            f"images: {height}x{width} is too small for parameter set {params!r} (needs both sides >= {ps.min_size}px)"
        )
    return params

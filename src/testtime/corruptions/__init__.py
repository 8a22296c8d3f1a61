"""Common corruptions (Hendrycks & Dietterich, ICLR 2019), batched in torch, at 5 severities.

The 15 benchmark corruptions of CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C / ImageNet-C and
the 4 held-out extras, with the published parameters for 32, 64 and 224 px images
(``hendrycks/robustness``, ``ImageNet-C/create_c/make_{cifar,tinyimagenet,imagenet}_c.py``).

Example::

    >>> from testtime.corruptions import corrupt, list_corruptions, CorruptedSplit
    >>> out = corrupt(images_uint8_nhwc, "frost", 5, seed=0)            # same form back
    >>> for x, y in CorruptedSplit(split, "fog", 5, seed=0).batches(200):
    ...     ...

Fidelity to the generators (random draws come from torch, so no image equals the released
files byte for byte; the algorithms and constants are the generators'):

* exact (tested byte for byte or to float round-off against an independent formulation):
  pixelate (Pillow BOX, 8-bit fixed point), jpeg_compression (Pillow), contrast,
  gaussian_blur (SciPy Gaussian), zoom_blur (SciPy ``zoom(order=1)``), glass_blur (the generator's
  loop including its numpy semantics: ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` copies, it does
  not swap), motion_blur (ImageMagick's kernel and offsets, edge virtual pixels, its Q16 PNG output
  ``floor(round(65535 y) / 257)``; snow's streaks the same),
  elastic_transform (affine + displacement, to SciPy's sampling), the uint8 truncation
  ``np.uint8(x * 255)`` of the outputs (of the exact value: see the next item).
* within one grey level: brightness and saturate (scikit-image HSV) and defocus_blur (the
  anti-aliased disk, OpenCV ``filter2D``) compute the same values, but the generator's float64
  arithmetic lands some exact levels just below them (brightness 4 on the grey level 81:
  ``(81 / 255 + 0.2) * 255`` is 131.99999999999997, which ``np.uint8`` truncates to 131) where this
  package's 8-bit output snaps them (132): one level lower there on up to 8% of the pixels of an
  image.
* close: elastic_transform uses exact bilinear weights where OpenCV's ``warpAffine`` quantises
  coordinates to 1/32 px; frost resizes the photographs with bilinear interpolation in float
  where OpenCV uses 11-bit fixed point (at scale 0.2 the sample points fall on pixels, so the
  CIFAR set is exact); spatter's Canny / distance transform / histogram equalisation are
  re-implementations of OpenCV's (checked on hand-computed cases, not against OpenCV itself);
  impulse_noise follows scikit-image >= 0.14 (per-value Bernoulli); float32 HSV arithmetic.
* as published, including quirks: frost draws from the first 5 of the 6 photographs
  (``np.random.randint(5)``); ImageNet-C's elastic constants use 244 (not 224); severities that
  are not monotone in effect (see docs/performance.md).
"""

from testtime.corruptions.core import check_name, check_severity, corrupt, list_corruptions, make_generator
from testtime.corruptions.dataset import CorruptedSplit, chunk_seed
from testtime.corruptions.params import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    PARAM_SETS,
    PARAMS,
    SEVERITIES,
    resolve_params,
)
from testtime.corruptions.registry import CORRUPTIONS

__all__ = [
    "ALL_CORRUPTIONS",
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTIONS",
    "CorruptedSplit",
    "EXTRA_CORRUPTIONS",
    "PARAMS",
    "PARAM_SETS",
    "SEVERITIES",
    "check_name",
    "check_severity",
    "chunk_seed",
    "corrupt",
    "list_corruptions",
    "make_generator",
    "resolve_params",
]

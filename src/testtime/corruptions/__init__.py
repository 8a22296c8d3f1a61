"""Common corruptions (Hendrycks & Dietterich, ICLR 2019), batched in torch, at 5 severities.

The 15 benchmark corruptions of CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C / ImageNet-C and
the 4 held-out extras, with the published parameters for 32, 64 and 224 px images.

Example::

    >>> from testtime.corruptions import corrupt, list_corruptions, CorruptedSplit
    >>> out = corrupt(images_uint8_nhwc, "frost", 5, seed=0)
    >>> for x, y in CorruptedSplit(split, "fog", 5, seed=0).batches(200):
    ...     ...
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

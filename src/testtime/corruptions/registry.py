"""The corruption registry and the per-call context every corruption function receives."""

from __future__ import annotations

from dataclasses import dataclass

from testtime.corruptions._ops import Rng
from testtime.corruptions.params import ParamSet
from testtime.registry import Registry


@dataclass(frozen=True)
class Context:
    """What a corruption function may use besides the images and its parameters.

    Attributes:
        rng: the explicit random source (draws land on the images' device).
        pset: the published parameter set in use (``cifar`` / ``tiny`` / ``imagenet``).
        quantized: True when the input came as uint8, so intermediate 8-bit steps of the
            original (PIL, ImageMagick, ``np.uint8`` casts) are reproduced.
    """

    rng: Rng
    pset: ParamSet
    quantized: bool


#: name -> fn(x: float (N, C, H, W) in [0, 1], p: this severity's parameters, ctx: Context) -> (N, C, H, W)
#: (unclipped). Meta: ``family`` (noise / blur / weather / digital), ``random`` (draws from the
#: generator), ``rgb`` (needs 3 channels; grey input is repeated to RGB and converted back by luma).
CORRUPTIONS: Registry = Registry("corruption")

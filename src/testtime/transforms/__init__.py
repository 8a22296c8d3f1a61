"""Batched, seeded image transforms: SimCLR views (TTT++ recipe) and the supervised crop + flip.

Example::

    >>> import torch
    >>> from testtime.transforms import SimCLRViewsConfig, simclr_views
    >>> v1, v2 = simclr_views(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
"""

from testtime.transforms.augmix import AugMixConfig as AugMixConfig
from testtime.transforms.augmix import augmix_views as augmix_views
from testtime.transforms.cotta_aug import CoTTAAugConfig as CoTTAAugConfig
from testtime.transforms.cotta_aug import cotta_augment as cotta_augment
from testtime.transforms.views import (
    CropFlipConfig,
    SimCLRViewsConfig,
    crop_flip,
    sample_crop_boxes,
    simclr_augment,
    simclr_views,
)

__all__ = [
    "CropFlipConfig",
    "SimCLRViewsConfig",
    "crop_flip",
    "sample_crop_boxes",
    "simclr_augment",
    "simclr_views",
]

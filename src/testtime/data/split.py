"""The one container for an image-classification split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageSplit:
    """An image-classification split held in memory.

    Attributes:
        images: uint8 array (N, H, W, C), C in {1, 3}.
        labels: int64 array (N,), values in [0, len(classes)).
        classes: class names, index = label.
        name: a human-readable name, e.g. ``"cifar10/test"`` or ``"cifar10-c/fog/5"``.
        meta: free-form provenance (path, severity, corruption, ...).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3):
            raise ValueError(
                f"images: expected a uint8 array (N, H, W, C) with C in {{1, 3}}, got "
                f"{getattr(im, 'dtype', type(im))} {getattr(im, 'shape', '')}"
            )
        if not isinstance(lb, np.ndarray) or lb.dtype != np.int64 or lb.ndim != 1:
            raise ValueError(f"labels: expected an int64 array (N,), got {getattr(lb, 'dtype', type(lb))}")
        if len(im) != len(lb):
            raise ValueError(f"images and labels differ in count: {len(im)} images, {len(lb)} labels")
        if len(lb) and (lb.min() < 0 or lb.max() >= len(self.classes)):
            raise ValueError(f"labels: values must lie in [0, {len(self.classes)}), got [{lb.min()}, {lb.max()}]")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def take(self, index: np.ndarray, name: str | None = None) -> ImageSplit:
        """A new split holding the rows ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        return ImageSplit(self.images[index], self.labels[index], self.classes, name or self.name, dict(self.meta))

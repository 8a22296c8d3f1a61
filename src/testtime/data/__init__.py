"""Datasets in their official formats, as :class:`ImageSplit` containers."""

from testtime.data.split import ImageSplit

__all__ = ["ImageSplit"]

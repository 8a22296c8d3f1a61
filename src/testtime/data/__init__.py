"""Datasets in their official formats, as :class:`ImageSplit` containers.

Example::

    from testtime.data import load_dataset, subset_per_class, list_datasets
    list_datasets()          # ['cifar10', 'cifar10-c', ..., 'tiny-imagenet-c']
    test = load_dataset("fashion-mnist", "test")
    small = subset_per_class(test, 100, seed=0)
"""

from testtime.data.datasets import DATASETS, DatasetSpec, find_dataset, list_datasets, load_dataset
from testtime.data.errors import DatasetError
from testtime.data.paths import cache_dir
from testtime.data.split import ImageSplit
from testtime.data.subset import subset_per_class, train_val_split

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "ImageSplit",
    "cache_dir",
    "find_dataset",
    "list_datasets",
    "load_dataset",
    "subset_per_class",
    "train_val_split",
]

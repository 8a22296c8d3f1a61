"""The dataset registry: ``load_dataset``, ``find_dataset``, ``list_datasets``.

Each entry knows where its files are searched, how to recognise them, which splits and options it
takes, and how to load them as an :class:`ImageSplit`. Arguments are checked before any file is
read; an unknown name is a KeyError listing the valid ones.

Example::

    from testtime.data import load_dataset, find_dataset
    test = load_dataset("fashion-mnist", "test")                 # (10000, 28, 28, 1)
    fog5 = load_dataset("cifar10-c", corruption="fog", severity=5, root="/data/CIFAR-10-C")
    path, searched = find_dataset("cifar10")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.data.cifar import (
    CIFAR10_FOLDERS,
    CIFAR100_FOLDERS,
    LABEL_TYPES,
    is_cifar10_dir,
    is_cifar100_dir,
    load_cifar,
)
from testtime.data.corrupted import (
    CIFAR10C_FOLDERS,
    CIFAR100C_FOLDERS,
    TINY_FOLDERS,
    TINYC_FOLDERS,
    _check_c_kw,
    is_cifar_c_dir,
    is_tiny_imagenet_c_dir,
    is_tiny_imagenet_dir,
    load_cifar_c,
    load_tiny_imagenet,
    load_tiny_imagenet_c,
)
from testtime.data.idx import is_fashion_mnist_dir, load_fashion_mnist
from testtime.data.imagefolder import check_on_bad_file, load_image_folder
from testtime.data.paths import DATA_ENV, candidate_dirs, first_match
from testtime.data.split import ImageSplit
from testtime.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is found and loaded.

    Attributes:
        name: registry name, e.g. ``"cifar10"``.
        loader: ``loader(folder, split, **options) -> ImageSplit``; ``folder`` is what
            :func:`find_dataset` returned.
        is_dataset: does a folder hold this dataset (cheap checks of marker files)?
        splits: valid split names (None: any, e.g. image folders).
        options: the keyword options the loader accepts.
        check: validates ``(split, **options)`` before any file is read (raises ValueError).
        folder_names: the release's official folder names, searched under the root and ``$TESTTIME_DATA``.
        fixed: further folders searched when no root is given (e.g. a Debian package's folder).
        root_required: True when nothing is searched without an explicit root.
        needs: one line for users: the files this dataset needs.
    """

    name: str
    loader: Callable[..., ImageSplit]
    is_dataset: Callable[[Path], bool]
    splits: tuple[str, ...] | None
    needs: str
    options: tuple[str, ...] = ()
    check: Callable[..., None] | None = None
    folder_names: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    root_required: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()


def find_dataset(name: str, root: str | os.PathLike | None = None) -> tuple[Path | None, list[Path]]:
    """Where dataset ``name`` is: ``(found folder or None, folders searched in order)``.

    With ``root`` only ``root`` and its official sub-folders are searched; without it,
    ``$TESTTIME_DATA/<name>``, ``$TESTTIME_DATA/<official folder>``, ``$TESTTIME_DATA``, the download
    folder and the dataset's fixed places (e.g. ``/usr/share/datasets/fashion-mnist``).
    """
    spec = DATASETS.get(name)
    if root is None and spec.root_required:
        return None, []
    searched = candidate_dirs(root, spec.name, spec.folder_names, spec.fixed)
    return first_match(searched, spec.is_dataset), searched


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None, **kw: Any) -> ImageSplit:
    """Load ``split`` of dataset ``name`` as an :class:`ImageSplit` (uint8 (N, H, W, C), int64 labels).

    Args:
        name: one of :func:`list_datasets` (KeyError listing them otherwise).
        split: e.g. "train" / "test" (Tiny-ImageNet: "train" / "val").
        root: a folder holding the dataset (searched alone when given); else the search of
            :func:`find_dataset`.
        **kw: the dataset's options, e.g. ``corruption=``, ``severity=`` for the -C sets,
            ``on_bad_file=``, ``cache_dir=`` for image folders.

    Raises:
        KeyError: unknown dataset. ValueError: bad split or option. FileNotFoundError: not found
        (the message lists the folders searched). DatasetError (a ValueError): malformed files.
    """
    spec = DATASETS.get(name)
    if spec.splits is not None and split not in spec.splits:
        raise ValueError(f"split: {spec.name} has splits {', '.join(spec.splits)}; got {split!r}")
    unknown = sorted(set(kw) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset {spec.name}; valid: {valid}")
    if spec.check is not None:
        spec.check(split, **kw)
    if spec.root_required and root is None:
        raise ValueError(f"root: dataset {spec.name} needs an explicit root folder ({spec.needs})")
    found, searched = find_dataset(spec.name, root)
    if found is None and spec.root_required:
        raise FileNotFoundError(f"root: {root} does not exist or is not a folder")
    if found is None:
        where = ", ".join(str(p) for p in searched[:8]) + (" ..." if len(searched) > 8 else "")
        raise FileNotFoundError(
            f"dataset {spec.name} not found (needs {spec.needs}); searched: {where}. Give its folder (--root on "
            f"the command line, data.root in a config, root= in Python) or set ${DATA_ENV}"
        )
    return spec.loader(found, split, **kw)


# ---------------------------------------------------------------------------------------------
# Registrations


def _fashion_loader(folder: Path, split: str) -> ImageSplit:
    return load_fashion_mnist(folder, split)


register_dataset(
    DatasetSpec(
        name="fashion-mnist",
        loader=_fashion_loader,
        is_dataset=is_fashion_mnist_dir,
        splits=("train", "test"),
        needs="{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (Debian: apt install dataset-fashion-mnist)",
        folder_names=("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
        fixed=("/usr/share/datasets/fashion-mnist",),
    )
)


def _imagefolder_check(split: str, **kw: Any) -> None:
    check_on_bad_file(kw.get("on_bad_file", "warn"))


def _imagefolder_loader(folder: Path, split: str, **kw: Any) -> ImageSplit:
    return load_image_folder(folder, split, **kw)


register_dataset(
    DatasetSpec(
        name="imagefolder",
        loader=_imagefolder_loader,
        is_dataset=lambda p: p.is_dir(),
        splits=None,
        needs="<root>[/<split>]/<class>/*.{png,jpg,jpeg}",
        options=("on_bad_file", "cache_dir", "cache"),
        check=_imagefolder_check,
        root_required=True,
    )
)


def _cifar_check(split: str, labels: str = "fine", **_: Any) -> None:
    if labels not in LABEL_TYPES:
        raise ValueError(f"labels: expected one of {', '.join(LABEL_TYPES)}, got {labels!r}")


register_dataset(
    DatasetSpec(
        name="cifar10",
        loader=lambda folder, split: load_cifar(folder, split, num_classes=10),
        is_dataset=is_cifar10_dir,
        splits=("train", "test"),
        needs="cifar-10-batches-py/ (python version) or cifar-10-batches-bin/ (binary version)",
        folder_names=CIFAR10_FOLDERS,
    )
)

register_dataset(
    DatasetSpec(
        name="cifar100",
        loader=lambda folder, split, **kw: load_cifar(folder, split, num_classes=100, **kw),
        is_dataset=is_cifar100_dir,
        splits=("train", "test"),
        needs="cifar-100-python/ (python version) or cifar-100-binary/ (binary version)",
        options=("labels",),
        check=_cifar_check,
        folder_names=CIFAR100_FOLDERS,
    )
)

register_dataset(
    DatasetSpec(
        name="cifar10-c",
        loader=lambda folder, split, **kw: load_cifar_c(folder, split, num_classes=10, **kw),
        is_dataset=is_cifar_c_dir,
        splits=("test",),
        needs="CIFAR-10-C/<corruption>.npy + labels.npy (zenodo 2535967)",
        options=("corruption", "severity"),
        check=_check_c_kw,
        folder_names=CIFAR10C_FOLDERS,
    )
)

register_dataset(
    DatasetSpec(
        name="cifar100-c",
        loader=lambda folder, split, **kw: load_cifar_c(folder, split, num_classes=100, **kw),
        is_dataset=is_cifar_c_dir,
        splits=("test",),
        needs="CIFAR-100-C/<corruption>.npy + labels.npy (zenodo 3555552)",
        options=("corruption", "severity"),
        check=_check_c_kw,
        folder_names=CIFAR100C_FOLDERS,
    )
)

register_dataset(
    DatasetSpec(
        name="tiny-imagenet",
        loader=load_tiny_imagenet,
        is_dataset=is_tiny_imagenet_dir,
        splits=("train", "val"),
        needs="tiny-imagenet-200/ (wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt)",
        options=("on_bad_file", "cache_dir", "cache"),
        check=_imagefolder_check,
        folder_names=TINY_FOLDERS,
    )
)


def _tinyc_check(split: str, **kw: Any) -> None:
    _check_c_kw(split, **kw)
    _imagefolder_check(split, **kw)


register_dataset(
    DatasetSpec(
        name="tiny-imagenet-c",
        loader=load_tiny_imagenet_c,
        is_dataset=is_tiny_imagenet_c_dir,
        splits=("test",),
        needs="Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG (zenodo 2536630)",
        options=("corruption", "severity", "on_bad_file", "cache_dir", "cache"),
        check=_tinyc_check,
        folder_names=TINYC_FOLDERS,
    )
)

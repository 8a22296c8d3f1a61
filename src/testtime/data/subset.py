"""Deterministic subsets and train/validation splits of an :class:`ImageSplit`.

Example::

    small = subset_per_class(split, n=100, seed=0)          # 100 images of each class
    train, val = train_val_split(split, val_fraction=0.1, seed=0)
"""

from __future__ import annotations

import numpy as np

from testtime.data.split import ImageSplit


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")


def subset_per_class(split: ImageSplit, n: int, seed: int) -> ImageSplit:
    """``n`` images of every class, drawn without replacement by a seeded permutation.

    The kept rows stay in their original order. Same split + n + seed = same rows. A class with
    fewer than ``n`` images is an error (ValueError naming it).

    Example::

        subset_per_class(split, 10, seed=0).labels.shape    # (10 * num_classes,)
    """
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a positive integer (images per class), got {n!r}")
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    keep = []
    for c, cls in enumerate(split.classes):
        idx = np.flatnonzero(split.labels == c)
        if len(idx) < n:
            raise ValueError(f"n={n}: class {cls!r} of {split.name} has only {len(idx)} images")
        keep.append(idx[rng.permutation(len(idx))[:n]])
    index = np.sort(np.concatenate(keep))
    out = split.take(index, name=f"{split.name}[{n}/class,seed={seed}]")
    out.meta.update(subset_of=split.name, per_class=int(n), seed=int(seed))
    return out


def train_val_split(
    split: ImageSplit, val_fraction: float, seed: int, stratified: bool = True
) -> tuple[ImageSplit, ImageSplit]:
    """Split into (train, val) with ``val_fraction`` of the rows in val, seeded and disjoint.

    Stratified: round(n_c * val_fraction) rows of each class c go to val (so class proportions
    are kept); else a seeded permutation of all rows. Rows keep their original order in both parts.

    Example::

        tr, va = train_val_split(split, 0.2, seed=0)
        len(tr) + len(va) == len(split)      # True
    """
    if not isinstance(val_fraction, float | int) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    if stratified:
        parts = []
        for c in range(split.num_classes):
            idx = np.flatnonzero(split.labels == c)
            k = int(round(len(idx) * val_fraction))
            parts.append(idx[rng.permutation(len(idx))[:k]])
        val_idx = np.concatenate(parts) if parts else np.empty(0, np.int64)
    else:
        k = int(round(len(split) * val_fraction))
        val_idx = rng.permutation(len(split))[:k]
    is_val = np.zeros(len(split), dtype=bool)
    is_val[val_idx] = True
    if not is_val.any() or is_val.all():
        raise ValueError(f"val_fraction={val_fraction}: leaves an empty train or val part for {len(split)} images")
    info = {"val_fraction": float(val_fraction), "seed": int(seed), "stratified": bool(stratified)}
    train = split.take(np.flatnonzero(~is_val), name=f"{split.name}[train]")
    val = split.take(np.flatnonzero(is_val), name=f"{split.name}[val]")
    train.meta.update(info, part="train")
    val.meta.update(info, part="val")
    return train, val

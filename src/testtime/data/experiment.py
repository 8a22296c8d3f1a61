"""The data of an experiment: the source training subset and the seeded, disjoint test subsets.

- ``train``: ``train_per_class`` images per class of the training split, drawn with ``data.seed``
  (the trained models depend on it);
- ``heldout``: ``heldout_per_class`` per class of the test split (seed ``data.seed + 1``), for
  choosing hyperparameters on the held-out corruptions, never on the test ones;
- ``test``: ``test_per_class`` per class of the test split, disjoint from ``heldout``. The eval seed
  (``data.eval_seed``, or the ``eval_seed`` argument; None = ``data.seed``) draws it: the eval seed
  equal to ``data.seed`` gives the subset every earlier run used; another one a fresh draw among the
  images not in ``heldout``. So several eval seeds reuse one trained model.

Example::

    data = load_data(cfg.data)                      # cfg: a testtime.config.PipelineConfig
    seed1 = eval_subset(data.pool, cfg.data, 1)     # another eval seed, same held-out subset
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from testtime.data.datasets import load_dataset
from testtime.data.split import ImageSplit
from testtime.data.subset import subset_per_class

if TYPE_CHECKING:
    from testtime.config.pipeline import DataConfig


@dataclass
class PipelineData:
    train: ImageSplit
    test: ImageSplit  # the clean seeded evaluation subset
    heldout: ImageSplit  # a disjoint seeded subset for the held-out corruptions
    pool: ImageSplit | None = None  # the whole test split the subsets come from (for other eval seeds)


def load_data(cfg: DataConfig, eval_seed: int | None = None) -> PipelineData:
    """Load the source training subset and the two seeded, disjoint test subsets."""
    root = cfg.root
    if root is None and cfg.root_env:
        root = os.environ.get(cfg.root_env) or None
    if cfg.dataset == "imagefolder" and root is None:
        env = f" or the environment variable ${cfg.root_env}" if cfg.root_env else ""
        raise ValueError(f"data.root: an image-folder dataset needs its folder: --set data.root=/path{env}")
    train = load_dataset(cfg.dataset, split=cfg.train_split, root=root)
    if cfg.train_per_class is not None:
        try:
            train = subset_per_class(train, cfg.train_per_class, seed=cfg.seed)
        except ValueError as exc:
            raise ValueError(f"data.train_per_class: {exc}") from None
    pool = load_dataset(cfg.dataset, split=cfg.test_split, root=root)
    test, heldout = _subsets(pool, cfg, cfg.eval_seed if eval_seed is None else eval_seed)
    return PipelineData(train, test, heldout, pool)


def eval_subset(pool: ImageSplit, cfg: DataConfig, eval_seed: int | None) -> ImageSplit:
    """The clean test subset of ``eval_seed`` (None = ``cfg.seed``), disjoint from the held-out subset."""
    return _subsets(pool, cfg, eval_seed)[0]


def _subsets(pool: ImageSplit, cfg: DataConfig, eval_seed: int | None) -> tuple[ImageSplit, ImageSplit]:
    rows_test = per_class_rows(pool.labels, cfg.test_per_class, cfg.seed, where="data.test_per_class")
    rows_held = per_class_rows(pool.labels, cfg.heldout_per_class, cfg.seed + 1, exclude=rows_test,
                               where="data.heldout_per_class")
    seed = cfg.seed if eval_seed is None else eval_seed
    if seed != cfg.seed:
        rows_test = per_class_rows(pool.labels, cfg.test_per_class, seed, exclude=rows_held,
                                   where="data.test_per_class")
    test = pool.take(rows_test, name=f"{pool.name}[{cfg.test_per_class}/class,seed={seed}]")
    heldout = pool.take(rows_held, name=f"{pool.name}[heldout {cfg.heldout_per_class}/class]")
    return test, heldout


def per_class_rows(
    labels: np.ndarray, n: int, seed: int, exclude: np.ndarray | None = None, where: str = "n"
) -> np.ndarray:
    """``n`` seeded rows of every class (sorted), none of them in ``exclude``; errors name ``where``."""
    rng = np.random.default_rng(seed)
    banned = np.zeros(len(labels), dtype=bool)
    if exclude is not None:
        banned[exclude] = True
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & ~banned)
        if len(idx) < n:
            left = " left (after the test subset)" if exclude is not None else ""
            raise ValueError(f"{where}={n}: class {c} has only {len(idx)} images{left}")
        keep.append(idx[rng.permutation(len(idx))[:n]])
    return np.sort(np.concatenate(keep))

"""Feature-distribution alignment of TTT++ (Liu et al., "TTT++: When Does Self-Supervised
Test-Time Training Fail or Thrive?", NeurIPS 2021, section 3.2, Eq. 5-6).

TTT++ keeps, from source time, the mean and covariance of the features and pulls the test
features' statistics towards them:

- :func:`coral`: CORAL distance between covariance matrices (Sun & Saenko, "Deep CORAL",
  ECCV-W 2016, Eq. 1): ``||C_s - C_t||_F^2 / (4 d^2)``;
- :func:`mean_alignment`: squared distance between the means, averaged over the d dimensions
  (the "linear MMD" term of TTT++): ``mean_k (mu_s[k] - mu_t[k])^2``;
- :func:`covariance`: unbiased covariance of a batch of features (Eq. 2 of Deep CORAL).

:func:`coral_loss` and :func:`mean_alignment_loss` take a batch of test features and the stored
source statistics.

Example::

    >>> import torch
    >>> f = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    >>> float(coral_loss(f, covariance(f)))
    0.0
"""

from __future__ import annotations

import torch

from testtime.losses._checks import check_embeddings


def _check_square(name: str, c: torch.Tensor, d: int | None = None) -> None:
    if not isinstance(c, torch.Tensor) or c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"{name}: expected a square (D, D) covariance matrix, got {tuple(getattr(c, 'shape', ()))}")
    if d is not None and c.shape[0] != d:
        raise ValueError(f"{name}: covariance is {tuple(c.shape)} but the features have D={d}")


def covariance(features: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance of ``features`` (B, D), B >= 2: ``(X - mean)^T (X - mean) / (B - 1)`` -> (D, D)."""
    check_embeddings("features", features, min_batch=2)
    xc = features - features.mean(dim=0, keepdim=True)  # (B, D)
    return xc.t() @ xc / (features.shape[0] - 1)  # (D, D)


def coral(cov_s: torch.Tensor, cov_t: torch.Tensor) -> torch.Tensor:
    """CORAL distance ``||C_s - C_t||_F^2 / (4 d^2)`` (Deep CORAL, Eq. 1; TTT++ Eq. 5)."""
    _check_square("cov_s", cov_s)
    _check_square("cov_t", cov_t, cov_s.shape[0])
    d = cov_s.shape[0]
    return (cov_s - cov_t).pow(2).sum() / (4.0 * d * d)


def coral_loss(features: torch.Tensor, source_cov: torch.Tensor) -> torch.Tensor:
    """CORAL between the covariance of test ``features`` (B, D), B >= 2, and ``source_cov`` (D, D)."""
    check_embeddings("features", features, min_batch=2)
    _check_square("source_cov", source_cov, features.shape[1])
    return coral(source_cov.to(features.dtype), covariance(features))


def mean_alignment(mean_s: torch.Tensor, mean_t: torch.Tensor) -> torch.Tensor:
    """``mean_k (mean_s[k] - mean_t[k])^2`` for two (D,) means (TTT++ Eq. 6, the linear-MMD term)."""
    for name, m in (("mean_s", mean_s), ("mean_t", mean_t)):
        if not isinstance(m, torch.Tensor) or m.ndim != 1:
            raise ValueError(f"{name}: expected a (D,) mean vector, got {tuple(getattr(m, 'shape', ()))}")
    if mean_s.shape != mean_t.shape:
        raise ValueError(f"mean_s and mean_t must have the same shape (D,), got {tuple(mean_s.shape)} and "
                         f"{tuple(mean_t.shape)}")
    return (mean_s - mean_t).pow(2).mean()


def mean_alignment_loss(features: torch.Tensor, source_mean: torch.Tensor) -> torch.Tensor:
    """Mean alignment between the mean of test ``features`` (B, D) and ``source_mean`` (D,)."""
    check_embeddings("features", features, min_batch=1)
    if not isinstance(source_mean, torch.Tensor) or source_mean.shape != (features.shape[1],):
        raise ValueError(f"source_mean: expected shape ({features.shape[1]},), got "
                         f"{tuple(getattr(source_mean, 'shape', ()))}")
    return mean_alignment(source_mean.to(features.dtype), features.mean(dim=0))

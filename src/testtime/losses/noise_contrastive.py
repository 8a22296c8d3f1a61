"""NC-TTT's noise-contrastive losses: tell two Gaussian feature-noise levels apart, then push clean
features to the low-noise side.

Osowiechi, Vargas Hakim, Noori, Cheraghalikhani, Bahri, Yazdanpanah, Ben Ayed, Desrosiers, "NC-TTT:
A Noise Contrastive Approach for Test-Time Training", CVPR 2024. Projected features ``f`` receive
noise ``n ~ N(0, s_high^2 I)`` or ``n ~ N(0, s_low^2 I)`` (D-dimensional at every position); a
discriminator learns the posterior that the noise came from the high-noise source, with soft targets
given by the likelihood ratio of the two Gaussians (equal priors)::

    y(n) = p_high(n) / (p_high(n) + p_low(n)) = sigmoid(0.5 (1/s_low^2 - 1/s_high^2) ||n||^2 - D log(s_high / s_low))

At test time the clean projected features of the test batch are pushed toward the low-noise side:
``-log(1 - sigmoid(d(f))) = softplus(d(f))`` (the official ``BCE(sigmoid(-d(f)), 1)``).

Example::

    >>> import torch
    >>> from testtime.losses.noise_contrastive import high_noise_posterior
    >>> n = torch.zeros(1, 8, 1, 1)  # no noise at all: surely the low-noise source
    >>> float(high_noise_posterior(n, 0.1, 0.015)[0, 0, 0]) < 1e-6
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_stds(std_high: float, std_low: float) -> None:
    if not (0 < std_low < std_high):
        raise ValueError(f"noise stds must satisfy 0 < std_low < std_high, got std_low={std_low}, std_high={std_high}")


def high_noise_posterior(noise: torch.Tensor, std_high: float, std_low: float) -> torch.Tensor:
    """Soft target ``y(n)`` of every noise vector: (B, D, H, W) -> (B, H, W), D = channel axis.

    Posteriors below 1e-6 are set to 0, as in the official code.
    """
    if noise.ndim != 4 or not noise.is_floating_point():
        raise ValueError(f"noise: expected a float tensor (B, D, H, W), got {noise.dtype} {tuple(noise.shape)}")
    _check_stds(std_high, std_low)
    d = noise.shape[1]
    z = 0.5 * (1 / std_low**2 - 1 / std_high**2) * noise.pow(2).sum(1) - d * math.log(std_high / std_low)  # (B, H, W)
    y = torch.sigmoid(z)
    return torch.where(y < 1e-6, torch.zeros_like(y), y)


def noise_discrimination_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(scores)`` against soft ``targets`` in [0, 1], mean over all entries.

    ``scores``: discriminator logits, any shape; ``targets``: the same shape (:func:`high_noise_posterior`).
    Computed from the logits (``binary_cross_entropy_with_logits``) for stability.
    """
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets must have the same shape, got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    return F.binary_cross_entropy_with_logits(scores, targets)


def low_noise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Test-time loss ``mean(-log(1 - sigmoid(scores))) = mean(softplus(scores))`` of clean features' scores."""
    if not scores.is_floating_point():
        raise ValueError(f"scores: expected a float tensor, got {scores.dtype}")
    return F.softplus(scores).mean()

"""Noise family: gaussian_noise, shot_noise, impulse_noise, speckle_noise.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019; parameters in :mod:`testtime.corruptions.params`.
All functions map float (N, C, H, W) in [0, 1] to (N, C, H, W), noise drawn per pixel and channel.
"""

from __future__ import annotations

import torch

from testtime.corruptions.registry import CORRUPTIONS, Context


@CORRUPTIONS.register("gaussian_noise", family="noise", random=True, rgb=False)
def gaussian_noise(x: torch.Tensor, sigma: float, ctx: Context) -> torch.Tensor:
    """``x + N(0, sigma^2)``."""
    return x + ctx.rng.normal(tuple(x.shape), 0.0, sigma)


@CORRUPTIONS.register("shot_noise", family="noise", random=True, rgb=False)
def shot_noise(x: torch.Tensor, lam: float, ctx: Context) -> torch.Tensor:
    """``Poisson(x * lambda) / lambda`` (photon noise)."""
    return ctx.rng.poisson(x * lam) / lam


@CORRUPTIONS.register("impulse_noise", family="noise", random=True, rgb=False)
def impulse_noise(x: torch.Tensor, amount: float, ctx: Context) -> torch.Tensor:
    """Salt and pepper (scikit-image ``random_noise(mode="s&p", amount)``).

    Each pixel-channel is replaced with probability ``amount``, by 1 or 0 with equal odds
    (one uniform draw per value decides both).
    """
    u = ctx.rng.uniform(tuple(x.shape), 0.0, 1.0)
    # one draw: u < amount flips the value; the lower half of that range salts, the upper peppers
    out = torch.where(u < amount / 2, torch.ones_like(x), x)
    return torch.where((u >= amount / 2) & (u < amount), torch.zeros_like(x), out)


@CORRUPTIONS.register("speckle_noise", family="noise", random=True, rgb=False)
def speckle_noise(x: torch.Tensor, sigma: float, ctx: Context) -> torch.Tensor:
    """``x + x * N(0, sigma^2)`` (multiplicative noise)."""
    return x + x * ctx.rng.normal(tuple(x.shape), 0.0, sigma)

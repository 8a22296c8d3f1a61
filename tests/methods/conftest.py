"""Fixtures shared by the baseline method tests (test_tent, test_eata, test_sar, test_memo, test_cotta).

Those tests check one adaptation step against the paper's update computed by hand, on a model small
enough to write out: conv 3x3 -> norm -> ReLU -> global mean -> linear (:class:`TinyNet`).

- ``make_tiny``: builds a seeded :class:`TinyNet`, with the initialisation each test file needs.
- ``tiny_forward``: that model's forward pass written out with plain tensors, the norm layer
  normalising by the input's own statistics (BN in training mode, or GN), gamma and beta given.
- ``entropy``: the Shannon entropy of the softmax, per row, written from its definition.
- ``colour_batch``: seeded random images with a per-image colour cast.

Example::

    def test_something(make_tiny, tiny_forward, colour_batch):
        m = make_tiny(weight=(0.5, 1.5), fc_scale=4.0)
        x = colour_batch(1)  # (16, 3, 8, 8)
        logits = tiny_forward(m, x, m.bn.weight, m.bn.bias)  # (16, 3)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """conv 3x3 (no bias) -> BatchNorm2d or GroupNorm(2) -> ReLU -> global mean -> linear; (B, 3, H, W) -> (B, k).

    ``attr`` names the norm layer's attribute (``"bn"`` or ``"norm"``): it is part of the parameter
    names the tests check (``model.bn.weight``).
    """

    def __init__(self, k: int = 3, width: int = 4, norm: str = "bn", attr: str = "bn") -> None:
        super().__init__()
        if norm not in ("bn", "gn"):
            raise ValueError(f"norm must be 'bn' or 'gn', got {norm!r}")
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        setattr(self, attr, nn.BatchNorm2d(width) if norm == "bn" else nn.GroupNorm(2, width))
        self.fc = nn.Linear(width, k)
        self._norm_attr = attr

    @property
    def norm_layer(self) -> nn.Module:
        return getattr(self, self._norm_attr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.norm_layer(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture
def make_tiny() -> Callable[..., TinyNet]:
    """``make(seed=0, *, norm="bn", attr="bn", weight=None, bias=None, running_mean=None, running_var=None,
    fc_scale=1.0)``: a :class:`TinyNet` built after ``torch.manual_seed(seed)``, then (in this order)
    norm weight ~ U(weight), norm bias ~ U(bias), running mean ~ U(running_mean), running variance
    ~ U(running_var) for the ranges given, and the classifier weight multiplied by ``fc_scale``
    (a larger scale makes confident predictions)."""

    def make(
        seed: int = 0,
        *,
        norm: str = "bn",
        attr: str = "bn",
        weight: tuple[float, float] | None = None,
        bias: tuple[float, float] | None = None,
        running_mean: tuple[float, float] | None = None,
        running_var: tuple[float, float] | None = None,
        fc_scale: float = 1.0,
    ) -> TinyNet:
        torch.manual_seed(seed)
        m = TinyNet(norm=norm, attr=attr)
        layer = m.norm_layer
        with torch.no_grad():
            if weight is not None:
                layer.weight.uniform_(*weight)
            if bias is not None:
                layer.bias.uniform_(*bias)
            if running_mean is not None:
                layer.running_mean.uniform_(*running_mean)
            if running_var is not None:
                layer.running_var.uniform_(*running_var)
            m.fc.weight.mul_(fc_scale)
        return m

    return make


@pytest.fixture
def tiny_forward() -> Callable[..., torch.Tensor]:
    """``forward(m, x, gamma, beta)``: :class:`TinyNet` ``m`` on ``x`` (B, 3, H, W) -> logits (B, k), written
    out, with the norm layer's affine parameters replaced by ``gamma``, ``beta`` (width,) and its
    statistics taken from ``x`` itself: BN over (B, H, W) (biased variance, as in training mode), GN
    per image over (C / G, H, W). The conv and classifier weights are ``m``'s, detached."""

    def forward(m: TinyNet, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        layer = m.norm_layer
        h = F.conv2d(x, m.conv.weight.detach(), padding=1)  # (B, W, H, W)
        if isinstance(layer, nn.BatchNorm2d):
            mu = h.mean(dim=(0, 2, 3), keepdim=True)
            var = ((h - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            h = (h - mu) / torch.sqrt(var + layer.eps)
        else:
            b, c, hh, ww = h.shape
            hg = h.reshape(b, layer.num_groups, c // layer.num_groups, hh, ww)  # (B, G, C/G, H, W)
            mu = hg.mean(dim=(2, 3, 4), keepdim=True)
            var = ((hg - mu) ** 2).mean(dim=(2, 3, 4), keepdim=True)
            h = ((hg - mu) / torch.sqrt(var + layer.eps)).reshape(b, c, hh, ww)  # (B, W, H, W)
        h = h * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
        z = h.clamp_min(0).mean(dim=(2, 3))  # (B, W)
        return z @ m.fc.weight.detach().T + m.fc.bias.detach()  # (B, k)

    return forward


@pytest.fixture
def entropy() -> Callable[[torch.Tensor], torch.Tensor]:
    """``entropy(logits)``: (B, K) -> (B,), ``-sum_c p_c log p_c`` with ``p = exp(logits - logsumexp)``."""

    def ent(logits: torch.Tensor) -> torch.Tensor:
        p = torch.exp(logits - torch.logsumexp(logits, 1, keepdim=True))
        return -(p * torch.log(p)).sum(1)

    return ent


@pytest.fixture
def colour_batch() -> Callable[..., torch.Tensor]:
    """``batch(seed, n=16, noise=0.3, cast=0.7)``: (n, 3, 8, 8) images ``noise * U + cast * U_colour``, one
    colour per image, so that predictions differ between images; seeded by ``seed``."""

    def batch(seed: int, n: int = 16, noise: float = 0.3, cast: float = 0.7) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, 8, 8, generator=g) * noise + torch.rand(n, 3, 1, 1, generator=g) * cast

    return batch


@pytest.fixture
def toy_split():
    """``split(n=48, seed=0, size=16)``: a seeded labelled source split of random uint8 images (n, size, size, 3),
    3 classes, for the source-stage tests of methods with heads trained at source time (clust3, nc-ttt, rec-ttt);
    16 px by default (a quarter of CIFAR's cost: those tests check training, saving and reloading), 32 px for
    commands that corrupt it with the CIFAR parameters."""
    import numpy as np

    from testtime.data.split import ImageSplit

    def split(n: int = 48, seed: int = 0, size: int = 16) -> ImageSplit:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        return ImageSplit(images, rng.integers(0, 3, n).astype(np.int64), ("a", "b", "c"), "toy")

    return split

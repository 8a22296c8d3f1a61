"""``tent``: test entropy minimisation over the BN affine parameters.

Wang, Shelhamer, Liu, Olshausen and Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021 (official code: DequanWang/tent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from testtime.losses.entropy import softmax_entropy
from testtime.methods.base import (
    Method,
    MethodConfig,
    Requirements,
    batchnorm_layers,
    register_method,
    use_batch_statistics,
)


@dataclass(frozen=True)
class TentConfig(MethodConfig):
    """TENT's CIFAR defaults (DequanWang/tent ``cfgs/tent.yaml``): Adam, lr 1e-3, betas (0.9, 0.999),
    no weight decay, 1 step per batch (the paper's batch size is 200; set by the protocol).

    ``bn_layers``: which BN layers have their affine parameters adapted: ``"all"`` (every BatchNorm
    type, the default) or ``"2d"`` (``nn.BatchNorm2d`` only, as the official ``collect_params``); see
    :func:`adapted_bn_layers`."""

    steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    bn_layers: str = "all"

    def __post_init__(self) -> None:
        check_bn_layers(self.bn_layers)


BN_LAYER_CHOICES = ("all", "2d")


def check_bn_layers(which: str) -> None:
    if which not in BN_LAYER_CHOICES:
        raise ValueError(f"bn_layers must be one of {list(BN_LAYER_CHOICES)}, got {which!r}")


def adapted_bn_layers(model: nn.Module, which: str = "all") -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers whose affine parameters TENT / EATA adapt.

    ``"all"`` (this package's default): every BatchNorm type (1d, 2d, 3d, SyncBatchNorm), so that BN
    in a classifier or projector head (BatchNorm1d) is adapted like the convolutional ones. ``"2d"``:
    ``nn.BatchNorm2d`` only, as the official ``collect_params`` of DequanWang/tent and mr-eggplant/EATA;
    the two are the same on the official models (CNNs whose only BN layers are 2d). Every BN layer
    normalises with the test batch's statistics either way (the official code keeps the whole model in
    train mode, so an unadapted BatchNorm1d does too).
    """
    check_bn_layers(which)
    layers = batchnorm_layers(model)
    return layers if which == "all" else [m for m in layers if isinstance(m, nn.BatchNorm2d)]


def bn_affine_params(method: nn.Module, model: nn.Module, which: str = "all") -> list[tuple[str, nn.Parameter]]:
    """(name relative to ``method``, parameter) of the weight and bias of ``model``'s adapted BN layers."""
    ids = {id(p) for m in adapted_bn_layers(model, which) for p in (m.weight, m.bias) if p is not None}
    return [(n, p) for n, p in method.named_parameters() if id(p) in ids]


def configure_bn_adaptation(model: nn.Module, which: str = "all") -> None:
    """TENT's configuration (Section 3.2 of the paper): train mode, BN normalises with test-batch
    statistics, only the BN scale ``gamma`` and shift ``beta`` (of :func:`adapted_bn_layers`) require grad."""
    model.train()
    model.requires_grad_(False)
    use_batch_statistics(model)
    for m in adapted_bn_layers(model, which):
        if m.weight is not None:
            m.weight.requires_grad_(True)
        if m.bias is not None:
            m.bias.requires_grad_(True)


@register_method("tent")
class Tent(Method):
    """TENT (Wang et al., ICLR 2021): each test batch is normalised with its own BN statistics and
    the BN affine parameters (gamma, beta) take one Adam step on the mean Shannon entropy of the
    batch's predictions, ``L = 1/B sum_b H(softmax(f(x_b)))`` (Eq. 2). The logits returned are those
    of the forward pass that computes the loss, i.e. predicted *before* the update (the official
    ``forward_and_adapt``); with ``steps > 1`` those of the last step's forward pass, as the official
    ``for _ in range(steps): outputs = forward_and_adapt(x)`` returns. Needs BN layers; batch size 1
    runs but its batch statistics are degenerate (one image), which is why the paper uses batches of
    200 (64 for ImageNet). Every BatchNorm type is adapted (the official code takes ``nn.BatchNorm2d``
    only, the same on its models; ``bn_layers="2d"`` reproduces it, see :func:`adapted_bn_layers`).

    Example::

        m = create_method("tent", model)   # Adam lr 1e-3, 1 step
        logits = m(x)                      # (B, K), adapts gamma/beta of every BN layer
    """

    paper = 'Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021'
    Config = TentConfig
    requirements = Requirements(adapts="BN affine (gamma, beta); BN uses test-batch statistics", needs_bn=True)
    default_order = "before"
    before_logits = "last"

    def configure(self) -> None:
        configure_bn_adaptation(self.model, self.config.bn_layers)

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return bn_affine_params(self, self.model, self.config.bn_layers)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)  # (B, K)
        return softmax_entropy(logits).mean(0), logits


def confident_example_model(num_classes: int = 4, in_chans: int = 3, scale: float = 20.0) -> nn.Module:
    """A ResNet-8 whose classifier weights are multiplied by ``scale`` (bias zeroed).

    A randomly initialised network predicts almost uniformly (entropy close to ln C), so methods
    that filter samples by entropy (EATA, SAR: keep E < 0.4 ln C) would select none and never
    update. A trained classifier is confident on part of its inputs; scaling the head of a random
    one mimics that, so the contract tests exercise the update path (about half of a random batch
    passes the filter at scale 20).
    """
    from testtime.models import create_model

    model = create_model("resnet8", num_classes=num_classes, in_chans=in_chans)
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.zero_()
    return model

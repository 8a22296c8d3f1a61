"""Backbones and the encoder / classifier split (f and h in the CTA paper).

Example::

    from testtime.models import create_model, split_classifier
    model = create_model("resnet20", num_classes=10)      # inputs: images in [0, 1]
    f, h = split_classifier(model)                        # f: encoder, h: linear head
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from testtime.models.airbench import _SPECS as _AIRBENCH_SPECS
from testtime.models.airbench import AirbenchEncoder
from testtime.models.resnet import _SPECS, CIFAR10_MEAN, CIFAR10_STD, Encoder, Normalize, ResNet
from testtime.models.split import Split, split_classifier
from testtime.registry import Registry

MODELS: Registry = Registry("model")

for _name, _spec in _SPECS.items():
    MODELS.add(_name, _spec, family="cifar-resnet")
for _name, _spec in _AIRBENCH_SPECS.items():
    MODELS.add(_name, _spec, family="airbench")


def create_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    norm: str = "batch",
    **kwargs: Any,
) -> ResNet:
    """Build a registered backbone with a linear classifier ``fc``.

    Args:
        name: one of ``list_models()``.
        num_classes: size of the classifier output (>= 2).
        in_chans: 1 (grey) or 3.
        mean, std: per-channel normalisation inside the model (default: CIFAR-10's, or 0.5 for grey).
        norm: ``"batch"`` (BatchNorm2d) or ``"group"`` (GroupNorm, 8 groups; the original TTT's choice).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if mean is None:
        mean = CIFAR10_MEAN if in_chans == 3 else (0.5,)
    if std is None:
        std = CIFAR10_STD if in_chans == 3 else (0.5,)
    if norm == "batch":
        norm_layer: type[nn.Module] = nn.BatchNorm2d
    elif norm == "group":
        norm_layer = _GroupNorm8
    else:
        raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
    encoder = MODELS.create(name, in_chans=in_chans, mean=mean, std=std, norm=norm_layer, **kwargs)
    return ResNet(encoder, num_classes)


class _GroupNorm8(nn.GroupNorm):
    def __init__(self, channels: int) -> None:
        super().__init__(min(8, channels), channels)


def list_models() -> list[str]:
    return MODELS.names()


__all__ = [
    "MODELS",
    "AirbenchEncoder",
    "Encoder",
    "Normalize",
    "ResNet",
    "Split",
    "create_model",
    "list_models",
    "split_classifier",
]

"""Split any classifier ``nn.Module`` into an encoder f and a classifier h, without editing it.

CTA never edits a user's architecture: it duplicates it. ``split_classifier`` returns two
modules that share the original's parameters (no copy); call ``copy.deepcopy`` on the result to
duplicate. Rules, in order:

1. ``split_fn(model) -> (encoder, head)`` when given;
2. ``head_attr``: the named attribute is the head, and the encoder is the model with that
   attribute replaced by ``nn.Identity`` *in a shallow wrapper* (the user's model is unchanged);
3. a model with ``.encoder`` and one of ``fc`` / ``head`` / ``classifier`` (testtime's ResNets);
4. the first of ``fc`` / ``head`` / ``classifier`` that is an ``nn.Linear`` (torchvision ResNets use
   ``fc``, timm models ``head`` or ``fc`` via ``get_classifier``, many others ``classifier``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HEAD_NAMES = ("fc", "head", "classifier")


class _WithoutHead(nn.Module):
    """Runs ``model`` with its attribute ``attr`` swapped for Identity during the call."""

    def __init__(self, model: nn.Module, attr: str) -> None:
        super().__init__()
        self.model = model
        self.attr = attr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = getattr(self.model, self.attr)
        setattr(self.model, self.attr, nn.Identity())
        try:
            return self.model(x)
        finally:
            setattr(self.model, self.attr, head)


class Split(nn.Module):
    """``head(encoder(x))`` with both parts reachable: f = ``encoder``, h = ``head``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def split_classifier(
    model: nn.Module,
    *,
    head_attr: str | None = None,
    split_fn: Callable[[nn.Module], tuple[nn.Module, nn.Module]] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Return ``(encoder, head)`` for ``model``; see the module docstring for the rules."""
    if split_fn is not None:
        enc, head = split_fn(model)
        return enc, head
    if head_attr is not None:
        if not isinstance(getattr(model, head_attr, None), nn.Module):
            raise ValueError(f"head_attr: model {type(model).__name__} has no module attribute {head_attr!r}")
        return _encoder_without(model, head_attr), getattr(model, head_attr)
    if isinstance(getattr(model, "encoder", None), nn.Module):
        for name in HEAD_NAMES:
            if isinstance(getattr(model, name, None), nn.Module):
                return model.encoder, getattr(model, name)
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Linear):
            return _encoder_without(model, name), getattr(model, name)
    raise ValueError(
        f"cannot split {type(model).__name__} into encoder and classifier: it has no nn.Linear attribute "
        f"named one of {HEAD_NAMES}; pass head_attr='<name of the final layer>' or "
        "split_fn=lambda m: (encoder, head)"
    )


def _encoder_without(model: nn.Module, attr: str) -> nn.Module:
    return _WithoutHead(model, attr)

"""Weight initialisations a preset can ask for (``model.conv_init``), applied to a freshly built model.

- ``"default"``: PyTorch's own (Kaiming-uniform), nothing changed.
- ``"dirac"``: airbench94's (Keller Jordan, github.com/KellerJordan/cifar10-airbench, ``airbench94.py``,
  ``Conv.reset_parameters``): after the default initialisation, the first ``C_in`` output filters of
  every 3x3 convolution are set to the identity (``torch.nn.init.dirac_``), so each block starts
  close to passing its input through. Applied here to every ungrouped convolution with an odd
  square kernel larger than 1 (airbench's 3x3 convolutions; its 2x2 whitening stem is left alone).

Example::

    model = create_model("airbench", 10)
    init_convs_(model.encoder, "dirac")
"""

from __future__ import annotations

import torch
from torch import nn

CONV_INITS = ("default", "dirac")


@torch.no_grad()
def dirac_init_(module: nn.Module) -> int:
    """Set the first ``min(C_out, C_in)`` filters of every eligible convolution of ``module`` to the
    identity (see the module docstring); returns how many convolutions were changed."""
    n = 0
    for m in module.modules():
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            continue
        kh, kw = m.kernel_size
        if kh != kw or kh < 3 or kh % 2 == 0:
            continue
        k = min(m.out_channels, m.in_channels)
        nn.init.dirac_(m.weight[:k])
        if m.bias is not None:
            m.bias.zero_()
        n += 1
    return n


def init_convs_(module: nn.Module, kind: str) -> None:
    """Apply the initialisation ``kind`` (one of :data:`CONV_INITS`) to ``module`` in place."""
    if kind not in CONV_INITS:
        raise ValueError(f"conv_init: unknown {kind!r}; valid: {', '.join(CONV_INITS)}")
    if kind == "dirac" and dirac_init_(module) == 0:
        raise ValueError("conv_init='dirac': the model has no convolution with an odd square kernel > 1")

"""Adaptive state whose size changes (support sets, memory banks), restored exactly by ``reset()``.

:class:`Method` keeps its adaptive state in buffers so that ``reset()`` restores it by
``load_state_dict``. PyTorch refuses to load a buffer whose shape differs from the current one; a
:class:`GrowingState` resizes its buffers to the saved shapes first, so a support set that grew from
10 to 130 rows goes back to its 10 source rows.

Example::

    state = GrowingState(feats=torch.zeros(0, 4))
    saved = {k: v.clone() for k, v in state.state_dict().items()}
    state.feats = torch.ones(3, 4)        # grows
    state.load_state_dict(saved)          # back to (0, 4)
"""

from __future__ import annotations

import torch
from torch import nn


class GrowingState(nn.Module):
    """A module holding named buffers whose shapes may change between snapshot and reset."""

    def __init__(self, **buffers: torch.Tensor) -> None:
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value.clone(), persistent=True)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for name, buf in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

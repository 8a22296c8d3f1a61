"""Rotation-prediction loss of TTT (Sun et al., "Test-Time Training with Self-Supervision for
Generalization under Distribution Shifts", ICML 2020).

The self-supervised task l_s of TTT (section 2, Eq. 1-2 of the paper) is 4-way classification of
the rotation (0, 90, 180, 270 degrees) applied to an image (Gidaris et al., 2018): the softmax
cross-entropy between the rotation head's logits and the rotation labels. At source time it is
added to the classification loss (joint training, Eq. 2); at test time it alone is minimised over
the shared encoder (Eq. 3).

Example::

    >>> import torch
    >>> logits, labels = torch.zeros(8, 4), torch.arange(4).repeat(2)
    >>> round(float(rotation_loss(logits, labels)), 4)  # ln 4 for uniform logits
    1.3863
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testtime.transforms.rotation import NUM_ROTATIONS


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the rotation classifier (TTT, Sun et al. 2020, l_s in Eq. 2-3).

    Args:
        logits: (N, 4) rotation-head outputs.
        labels: (N,) int64 rotation labels in {0, 1, 2, 3} (``k`` = rotated by k * 90 degrees).
    Returns:
        scalar: ``mean_i -log softmax(logits_i)[labels_i]``.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != NUM_ROTATIONS:
        shape = tuple(getattr(logits, "shape", ()))
        raise ValueError(f"logits: expected a (N, {NUM_ROTATIONS}) tensor of rotation logits, got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor, got {logits.dtype}")
    if logits.shape[0] < 1:
        raise ValueError("logits: empty batch; the rotation loss needs at least one image")
    if not isinstance(labels, torch.Tensor) or labels.shape != (logits.shape[0],):
        raise ValueError(f"labels: expected shape ({logits.shape[0]},), got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels: expected integer rotation labels, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_ROTATIONS:
        raise ValueError(f"labels: rotation labels must lie in 0..{NUM_ROTATIONS - 1}")
    return F.cross_entropy(logits, labels.long())

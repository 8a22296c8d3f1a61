"""Cross-entropy of the supervised model: Eq. (3) of the CTA paper (Barbeau et al., "CTA:
Cross-Task Alignment for Better Test Time Training", section 3.2).

Example::

    >>> import torch
    >>> from testtime.losses import cross_entropy
    >>> round(float(cross_entropy(torch.zeros(4, 10), torch.tensor([0, 1, 2, 3]))), 4)
    2.3026
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testtime.losses._checks import check_embeddings


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy ``-1/B sum_s log softmax(logits_s)[y_s]`` (Eq. 3, sign as a loss).

    Args:
        logits: (B, C) float, ``h(f(x))``.
        labels: (B,) int64 class indices in [0, C).
        label_smoothing: optional smoothing in [0, 1) (0 = Eq. 3).
    Returns:
        scalar.
    """
    check_embeddings("logits", logits)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(
            f"labels: expected an int64 tensor (B,), got {getattr(labels, 'dtype', type(labels))} "
            f"{tuple(getattr(labels, 'shape', ()))}"
        )
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"logits and labels differ in batch size: {logits.shape[0]} vs {labels.shape[0]}")
    c = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(
            f"labels: values must lie in [0, {c}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)

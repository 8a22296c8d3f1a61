"""Entropy losses of the fully test-time adaptation methods (TENT, EATA, SAR, CoTTA).

- :func:`softmax_entropy`: ``H(y_hat) = -sum_c p(y_c) log p(y_c)`` per sample, Eq. (2) of TENT
  (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021); EATA
  (Niu et al., ICML 2022, Eq. 3 / 6) and SAR (Niu et al., ICLR 2023, Eq. 2) weight and filter it.
- :func:`soft_cross_entropy`: ``-sum_c q_c log p_c`` with a teacher distribution ``q`` (CoTTA,
  Wang et al., CVPR 2022, Eq. 1: the student's cross-entropy to the teacher's pseudo-label).

Example::

    >>> import torch
    >>> from testtime.losses.entropy import softmax_entropy
    >>> round(float(softmax_entropy(torch.zeros(2, 4))[0]), 4)  # uniform over 4 classes: ln 4
    1.3863
"""

from __future__ import annotations

import torch

from testtime.losses._checks import check_embeddings


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy of ``softmax(logits)`` (TENT Eq. 2), in nats.

    Args:
        logits: (B, C) float.
    Returns:
        (B,) entropies, each in [0, ln C]. Reduce with ``.mean()`` for TENT's loss.
    """
    check_embeddings("logits", logits)
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)  # (B,)


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``-sum_c softmax(teacher)_c log softmax(logits)_c`` (CoTTA Eq. 1).

    The teacher distribution is taken as given (no gradient flows into ``teacher_logits`` if it is
    detached by the caller; CoTTA's teacher is an EMA model and its outputs carry no gradient).

    Args:
        logits: (B, C) student logits.
        teacher_logits: (B, C) teacher logits (the augmentation-averaged pseudo-label of CoTTA).
    Returns:
        (B,) cross-entropies.
    """
    check_embeddings("logits", logits)
    check_embeddings("teacher_logits", teacher_logits)
    if logits.shape != teacher_logits.shape:
        raise ValueError(f"logits and teacher_logits must have the same shape (B, C), got "
                         f"{tuple(logits.shape)} and {tuple(teacher_logits.shape)}")
    return -(teacher_logits.softmax(1) * logits.log_softmax(1)).sum(1)  # (B,)

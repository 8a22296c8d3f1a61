"""ReC-TTT's losses: global cosine distance of reconstructed feature maps, and the symmetric KL between
the two classifiers.

Colussi, Mascetti, Dolz, Desrosiers, "ReC-TTT: Contrastive Feature Reconstruction for Test-Time
Training", arXiv 2411.17869 (WACV 2025); official code warpcut/ReC-TTT (``utils.global_cosine``,
``train_recttt.py``).

- :func:`global_cosine_distance`: ``1/B sum_b (1 - cos(vec(t_b), vec(r_b)))`` between a target feature
  map ``t`` and its reconstruction ``r``, each image's map flattened to one vector; the target is a
  constant (stop-gradient), as in the official ``global_cosine(stop_grad=True)``.
- :func:`symmetric_kl`: ``KL(p2 || p1) + KL(p1 || p2)`` of the two classifiers' class distributions,
  each direction with the other side detached, averaged over the batch. The official code applies
  ``log_softmax`` over dimension 0 (the batch) instead of the classes; here it is over the classes.

Example::

    >>> import torch
    >>> from testtime.losses.reconstruction import global_cosine_distance
    >>> t = torch.rand(2, 4, 3, 3)
    >>> float(global_cosine_distance(t, 2 * t)) < 1e-6  # same direction: no distance
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testtime.losses._checks import check_embeddings


def global_cosine_distance(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``1 - cos(flatten(target_b), flatten(recon_b))``; no gradient into ``target``.

    Args:
        target: (B, ...) feature maps to reconstruct.
        recon: (B, ...) the same shape.
    Returns:
        the scalar distance in [0, 2].
    """
    if target.shape != recon.shape:
        raise ValueError(f"target and recon must have the same shape, got {tuple(target.shape)} and "
                         f"{tuple(recon.shape)}")
    if target.ndim < 2:
        raise ValueError(f"target: expected a batch of feature maps (B, ...), got shape {tuple(target.shape)}")
    b = target.shape[0]
    cos = F.cosine_similarity(target.detach().reshape(b, -1), recon.reshape(b, -1), dim=1)  # (B,)
    return (1 - cos).mean()


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """``1/B sum_b [KL(p2_b || p1_b) + KL(p1_b || p2_b)]``, the target side of each term detached.

    Args:
        logits1, logits2: (B, K) logits of the two classifiers.
    """
    check_embeddings("logits1", logits1)
    check_embeddings("logits2", logits2)
    if logits1.shape != logits2.shape:
        raise ValueError(f"logits1 and logits2 must have the same shape, got {tuple(logits1.shape)} and "
                         f"{tuple(logits2.shape)}")
    lp1, lp2 = logits1.log_softmax(1), logits2.log_softmax(1)  # (B, K)
    kl_21 = (lp2.detach().exp() * (lp2.detach() - lp1)).sum(1)  # KL(p2 || p1), gradient into 1
    kl_12 = (lp1.detach().exp() * (lp1.detach() - lp2)).sum(1)  # KL(p1 || p2), gradient into 2
    return (kl_21 + kl_12).mean()

"""SHOT's information-maximisation (IM) loss: confident individual predictions, diverse on average.

Liang, Hu and Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
Unsupervised Domain Adaptation", ICML 2020, Section 3.2 (the IM loss): ``L_ent = -E_x sum_k p_k log p_k`` and
``L_div = sum_k p_bar_k log p_bar_k`` with ``p_bar = E_x p``; ``L_IM = L_ent + L_div``. As the official
code (tim-learn/SHOT, ``loss.Entropy`` and ``gentropy_loss``), ``epsilon = 1e-5`` is added inside both
logarithms.

Example::

    >>> import torch
    >>> from testtime.losses.information_maximization import information_maximization
    >>> loss, ent, div = information_maximization(torch.tensor([[9.0, 0.0], [0.0, 9.0]]))
    >>> round(float(div), 3)  # diverse batch: -H(p_bar) = -ln 2
    -0.693
"""

from __future__ import annotations

import torch

from testtime.losses._checks import check_embeddings


def information_maximization(logits: torch.Tensor, epsilon: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """SHOT's IM loss on a batch of logits.

    Args:
        logits: (B, K) float, B >= 1 (the diversity term is only informative for B >= 2).
        epsilon: added inside the logarithms (official 1e-5).
    Returns:
        (loss, ent, div): ``ent`` the mean per-sample entropy L_ent, ``div`` the negative entropy
        of the mean prediction L_div, ``loss = ent + div``.
    """
    check_embeddings("logits", logits)
    p = logits.softmax(1)  # (B, K)
    ent = -(p * torch.log(p + epsilon)).sum(1).mean()
    p_bar = p.mean(0)  # (K,)
    div = (p_bar * torch.log(p_bar + epsilon)).sum()
    return ent + div, ent, div

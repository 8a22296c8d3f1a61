"""MEMO's marginal entropy: the entropy of the prediction averaged over augmented views of ONE image.

Zhang, Levine and Finn, "MEMO: Test Time Robustness via Adaptation and Augmentation", NeurIPS 2022,
Eq. (1)-(2): ``p_bar(y|x) = 1/B sum_i p(y | a_i(x))`` and ``l(theta; x) = H(p_bar) = -sum_y
p_bar(y|x) log p_bar(y|x)``. Computed in log space (log-mean-exp of the per-view log-probabilities)
so that it stays finite when some views are very confident.

Example::

    >>> import torch
    >>> from testtime.losses.marginal_entropy import marginal_entropy
    >>> loss, avg_logp = marginal_entropy(torch.zeros(8, 10))
    >>> round(float(loss), 4)  # uniform over 10 classes: ln 10
    2.3026
"""

from __future__ import annotations

import math

import torch

from testtime.losses._checks import check_embeddings


def marginal_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of the mean softmax over the views (MEMO Eq. 2).

    Args:
        logits: (B, C), one row per augmented view of the same image (B >= 1).
    Returns:
        (loss, avg_log_prob): the scalar marginal entropy and ``log p_bar`` (C,).
    """
    check_embeddings("logits", logits)
    logp = logits.log_softmax(1)  # (B, C)
    avg = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])  # (C,) log of the mean probability
    avg = avg.clamp_min(torch.finfo(avg.dtype).min)  # -inf -> finite, so 0 * log 0 stays 0
    return -(avg.exp() * avg).sum(), avg

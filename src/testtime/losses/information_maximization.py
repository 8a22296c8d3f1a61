"""Information maximisation (IM): confident individual predictions, diverse on average.

One quantity, two published uses. With ``p_n`` the softmax of row ``n`` of the logits and
``p_bar = 1/N sum_n p_n``::

    L_ent = 1/N sum_n H(p_n)         (conditional entropy H(Z|X): confident predictions)
    L_div = -H(p_bar)                (negative marginal entropy: balanced on average)

- SHOT (Liang, Hu and Feng, "Do We Really Need to Access the Source Data? Source Hypothesis
  Transfer for Unsupervised Domain Adaptation", ICML 2020, Section 3.2): ``L_IM = L_ent + L_div``,
  :func:`information_maximization`. As the official code (tim-learn/SHOT, ``loss.Entropy`` and
  ``gentropy_loss``), ``epsilon = 1e-5`` is added inside both logarithms.
- ClusT3 (Hakim et al., "ClusT3: Information Invariant Test-Time Training", ICCV 2023): cluster
  logits of every position of a feature map, ``L_IM = L_ent + KL(p_bar || u_K) = L_ent + L_div +
  log K = -I(X; Z) + log K``, :func:`clustering_information_maximization` (0 for confident,
  perfectly balanced assignments). The official code (dosowiechi/ClusT3, ``utils.Entropy`` +
  ``KLDivLoss(reduction='batchmean')``) writes the marginal term as ``KL(u_K || softmax(mean of
  the logits)) / K``: the softmax of the averaged logits instead of the averaged softmax, the
  reverse KL direction, and a division by K. Both push toward balanced clusters; this module uses
  the mean of the per-sample softmax, the mutual information itself (Krause et al. 2010, which
  ClusT3 names; the paper's own equation was not available here to check its exact form).

With ``epsilon = 0`` both terms are computed from log-softmax and log-sum-exp, finite for any
finite logits.

Example::

    >>> import torch
    >>> from testtime.losses.information_maximization import information_maximization
    >>> loss, ent, div = information_maximization(torch.tensor([[9.0, 0.0], [0.0, 9.0]]))
    >>> round(float(div), 3)  # diverse batch: -H(p_bar) = -ln 2
    -0.693
    >>> round(float(clustering_information_maximization(torch.zeros(6, 10))), 4)  # uniform: log K
    2.3026
"""

from __future__ import annotations

import math

import torch

from testtime.losses._checks import check_embeddings


def im_terms(logits: torch.Tensor, epsilon: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_ent, L_div)`` of (N, K) logits; ``epsilon > 0`` adds it inside the logarithms (SHOT)."""
    check_embeddings("logits", logits)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if epsilon > 0:
        p = logits.softmax(1)  # (N, K)
        ent = -(p * torch.log(p + epsilon)).sum(1).mean()
        p_bar = p.mean(0)  # (K,)
        return ent, (p_bar * torch.log(p_bar + epsilon)).sum()
    logp = logits.log_softmax(1)  # (N, K)
    ent = -(logp.exp() * logp).sum(1).mean()
    log_pbar = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])  # (K,) log of the mean prediction
    log_pbar = log_pbar.clamp_min(torch.finfo(log_pbar.dtype).min)
    return ent, (log_pbar.exp() * log_pbar).sum()


def information_maximization(
    logits: torch.Tensor, epsilon: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SHOT's IM loss on a batch of logits.

    Args:
        logits: (B, K) float, B >= 1 (the diversity term is only informative for B >= 2).
        epsilon: added inside the logarithms (official 1e-5).
    Returns:
        (loss, ent, div): ``ent`` the mean per-sample entropy L_ent, ``div`` the negative entropy
        of the mean prediction L_div, ``loss = ent + div``.
    """
    ent, div = im_terms(logits, epsilon)
    return ent + div, ent, div


def clustering_information_maximization(logits: torch.Tensor) -> torch.Tensor:
    """ClusT3's ``1/N sum_n H(softmax(z_n)) + KL(p_bar || uniform)`` over N samples of K cluster logits.

    Args:
        logits: (N, K) float, one row per sample (ClusT3: per position of a feature map), K >= 2.
    Returns:
        the scalar loss, in nats, in [0, 2 log K].
    """
    check_embeddings("logits", logits)
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"logits: need K >= 2 clusters, got {k}")
    ent, div = im_terms(logits)
    return ent + div + math.log(k)

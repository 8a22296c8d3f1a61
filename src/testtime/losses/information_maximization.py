"""ClusT3's information-maximisation clustering loss, ``L_IM = H(Z|X) - H(Z) + log K``.

Hakim, Osowiechi, Noori, Cheraghalikhani, Bahri, Ben Ayed, Desrosiers, "ClusT3: Information
Invariant Test-Time Training", ICCV 2023: a projector maps every position of a feature map to K
cluster logits; the mutual information I(X; Z) between features and cluster assignments is
maximised, i.e. the conditional entropy of each assignment is minimised (confident assignments)
while the entropy of the mean assignment is maximised (balanced clusters). With ``p_n`` the softmax
of sample ``n``'s logits and ``p_bar = 1/N sum_n p_n``::

    L_IM = 1/N sum_n H(p_n) + KL(p_bar || u_K) = H(Z|X) - H(Z) + log K = -I(X; Z) + log K

``KL(p_bar || u_K) = log K - H(p_bar)``, so the loss is the negative mutual information up to the
constant ``log K``; it is 0 for confident, perfectly balanced assignments.

The official code (dosowiechi/ClusT3, ``utils.Entropy`` + ``KLDivLoss(reduction='batchmean')``)
writes the marginal term as ``KL(u_K || softmax(mean of the logits)) / K``: the softmax of the
averaged logits instead of the averaged softmax, the reverse KL direction, and a division by K
(``batchmean`` on a 1-D input). Both terms push toward balanced clusters; this module uses the
mean of the per-sample softmax, i.e. the mutual information itself (the information-maximisation
objective of Krause et al. 2010 that ClusT3 names; the paper's own equation was not available here
to check its exact form).

Example::

    >>> import torch
    >>> from testtime.losses.information_maximization import information_maximization
    >>> round(float(information_maximization(torch.zeros(6, 10))), 4)  # uniform: H = log K, p_bar = u
    2.3026
"""

from __future__ import annotations

import math

import torch

from testtime.losses._checks import check_embeddings


def information_maximization(logits: torch.Tensor) -> torch.Tensor:
    """``1/N sum_n H(softmax(z_n)) + KL(p_bar || uniform)`` over N samples of K cluster logits.

    Args:
        logits: (N, K) float, one row per sample (ClusT3: per position of a feature map), K >= 2.
    Returns:
        the scalar loss, in nats, in [0, 2 log K].
    """
    check_embeddings("logits", logits)
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"logits: need K >= 2 clusters, got {k}")
    logp = logits.log_softmax(1)  # (N, K)
    cond = -(logp.exp() * logp).sum(1).mean()  # H(Z|X)
    log_pbar = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])  # (K,) log of the mean assignment
    log_pbar = log_pbar.clamp_min(torch.finfo(log_pbar.dtype).min)
    kl = (log_pbar.exp() * (log_pbar + math.log(k))).sum()  # KL(p_bar || u_K)
    return cond + kl

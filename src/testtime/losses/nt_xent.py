"""NT-Xent, the SimCLR contrastive loss: Eq. (1) of the CTA paper (Barbeau et al., "CTA:
Cross-Task Alignment for Better Test Time Training"), after Chen et al. (2020) and TTT++.

Example::

    >>> import torch
    >>> from testtime.losses import nt_xent
    >>> h1, h2 = torch.randn(8, 64), torch.randn(8, 64)
    >>> float(nt_xent(h1, h2, tau=0.5)) > 0
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testtime.losses._checks import check_embeddings, check_same_shape, check_temperature


def nt_xent(h1: torch.Tensor, h2: torch.Tensor, tau: float = 0.01, *, symmetric: bool = True) -> torch.Tensor:
    """Normalised-temperature cross-entropy over two views of one batch (Eq. 1, CTA paper).

    For anchor ``h1[i]`` the positive is ``h2[i]``; the denominator runs over all 2B vectors of
    ``{h1} U {h2}`` except the anchor itself (the indicator of Eq. 1); similarity is cosine (Eq. 2),
    divided by ``tau``.

    Args:
        h1: (B, D) projections of the first views (``h_hat`` in the paper), B >= 2.
        h2: (B, D) projections of the second views (``h_tilde``).
        tau: temperature; the paper uses 0.01 for source training and test-time training.
        symmetric: ``True`` (default, as SimCLR and TTT++ implement it) averages over the 2B anchors
            of both views; ``False`` uses the B anchors ``h1[i]`` of Eq. 1 as printed.

    Returns:
        scalar: the mean over anchors of ``-log softmax`` at the positive (Eq. 1 sums; the mean
        only rescales it by 1/B or 1/2B).
    """
    check_embeddings("h1", h1, min_batch=2)
    check_embeddings("h2", h2, min_batch=2)
    check_same_shape("h1", h1, "h2", h2)
    check_temperature(tau)
    b = h1.shape[0]
    z = F.normalize(torch.cat([h1, h2], dim=0), dim=1)  # (2B, D)
    sim = z @ z.t() / tau  # (2B, 2B)
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # the anchor is not in its own denominator
    idx = torch.arange(b, device=z.device)
    pos = torch.cat([idx + b, idx])  # (2B,) index of each anchor's positive
    logp = torch.log_softmax(sim, dim=1)  # (2B, 2B)
    nll = -logp[torch.arange(2 * b, device=z.device), pos]  # (2B,)
    return nll.mean() if symmetric else nll[:b].mean()

"""Cross-encoder alignment loss: Eq. (4) of the CTA paper (Barbeau et al., "CTA: Cross-Task
Alignment for Better Test Time Training", section 3.4).

The self-supervised projections of two views, ``h_hat = pi(g(x_hat))`` and ``h_tilde =
pi(g(x_tilde))``, are pulled towards the frozen supervised encoder's output ``w = f(x)`` of the
same image, and pushed from every other vector of the batch.

Note on ``w``: the paper writes ``w_i = h(f(x_i))`` but its text (``h(pi(g(x)))`` must be a valid
input of the frozen classifier ``h``) and Table 6 need ``w_i`` to be the encoder output ``f(x_i)``.
This implementation expects ``w = f(x)`` (feature dimension D), not logits.

Example::

    >>> import torch
    >>> from testtime.losses import cross_encoder_alignment
    >>> h1, h2, w = torch.randn(8, 64), torch.randn(8, 64), torch.randn(8, 64)
    >>> float(cross_encoder_alignment(h1, h2, w, tau=0.5)) > 0
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testtime.losses._checks import check_embeddings, check_same_shape, check_temperature


def cross_encoder_alignment(
    h1: torch.Tensor, h2: torch.Tensor, w: torch.Tensor, tau: float = 0.5
) -> torch.Tensor:
    """Eq. 4 of the CTA paper: contrastive alignment of two SSL views to the supervised features.

    Anchors are the 2B vectors ``h1[i]`` and ``h2[i]``; each anchor's positive is ``w[i]``; its
    denominator runs over ``H U W`` (all 3B vectors: both views and the supervised features) minus
    the anchor itself, so the other view of the same image counts as a negative, exactly as Eq. 4 is
    written. Similarity is cosine (Eq. 2) divided by ``tau``.

    Args:
        h1: (B, D) ``pi(g(x_hat))``, B >= 2.
        h2: (B, D) ``pi(g(x_tilde))``.
        w: (B, D) ``f(x)`` from the frozen supervised encoder (gradients through it are kept if
            the caller lets them flow, for the "f trainable + CE" ablation of section 3.4).
        tau: temperature; the paper's alignment uses 0.5 (Table 1, Table 3).

    Returns:
        scalar: the mean over the 2B anchors (Eq. 4 sums both terms; the mean rescales by 1/2B).
    """
    check_embeddings("h1", h1, min_batch=2)
    check_embeddings("h2", h2, min_batch=2)
    check_embeddings("w", w, min_batch=2)
    check_same_shape("h1", h1, "h2", h2)
    check_same_shape("h1", h1, "w", w)
    check_temperature(tau)
    b = h1.shape[0]
    z = F.normalize(torch.cat([h1, h2, w], dim=0), dim=1)  # (3B, D)
    anchors = z[: 2 * b]  # (2B, D)
    sim = anchors @ z.t() / tau  # (2B, 3B)
    cols = torch.arange(2 * b, device=z.device)
    self_mask = torch.zeros_like(sim, dtype=torch.bool)
    self_mask[cols, cols] = True  # the anchor itself is excluded
    sim = sim.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(b, device=z.device)
    pos = torch.cat([idx, idx]) + 2 * b  # (2B,) column of w[i]
    logp = torch.log_softmax(sim, dim=1)  # (2B, 3B)
    return -logp[cols, pos].mean()

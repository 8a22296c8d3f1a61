"""Attention baselines of the same interface and size as a TTT layer (rows beside it in docs/ttt-layers.md).

Both have bias-free Q, K, V and output projections (width x width each), multi-head, causal.

* :class:`SoftmaxAttention`: ``softmax(Q K^T / sqrt(d) + causal mask) V``.
* :class:`LinearAttention`: Katharopoulos et al. (2020), feature map ``phi(x) = elu(x) + 1``,
  ``y_t = sum_{j<=t} phi(q_t).phi(k_j) v_j / sum_{j<=t} phi(q_t).phi(k_j)``; computed here with the
  causal quadratic form, which is exact and fast at the short lengths of the small task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from testtime.layers.ttt import check_sequence


class _Attention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1 or width % num_heads:
            raise ValueError(f"num_heads: must be a positive integer dividing width {width}, got {num_heads!r}")
        self.width, self.num_heads = width, num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence(x, self.width)
        bsz, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, length, self.num_heads, -1).transpose(1, 2)  # (B, H, L, d)

        y = self.attend(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.o_proj(y.transpose(1, 2).reshape(bsz, length, self.width))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SoftmaxAttention(_Attention):
    """Causal multi-head softmax attention."""

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class LinearAttention(_Attention):
    """Causal multi-head linear attention with phi = elu + 1."""

    def attend(self, q, k, v):
        fq, fk = F.elu(q) + 1.0, F.elu(k) + 1.0
        length = q.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        a = torch.where(causal, fq @ fk.transpose(-1, -2), 0.0)  # (B, H, L, L)
        return (a @ v) / a.sum(-1, keepdim=True).clamp_min(1e-6)

"""The inner model of a TTT layer and its self-supervised loss (Sun et al., 2024, Sec. 2.1-2.3, 2.7).

The hidden state of a TTT layer is the weight ``W`` of a small model ``f`` applied per head:

* TTT-Linear: ``f(x; W) = x W1 + b1`` with ``W1`` of shape (d, d);
* TTT-MLP: ``f(x; W) = GELU(x W1 + b1) W2 + b2`` with ``W1`` (d, 4d), ``W2`` (4d, d) and the tanh
  approximation of GELU, as in the official code (test-time-training/ttt-lm-pytorch, ``ttt.py``).

Weights are a tuple ``(W1, b1[, W2, b2])`` with leading batch and head dimensions:
``W`` is (B, H, d_in, d_out) and ``b`` is (B, H, 1, d_out). Sequences are (B, H, n, d).

The inner (reconstruction) loss of token t is ``l(W; x_t) = 1/2 ||LN(f(k_t; W)) - (v_t - k_t)||^2``,
with a per-head LayerNorm (weight and bias learnt in the outer loop, eps 1e-6). The 1/2 matches the
official code, whose fused LayerNorm-L2 backward returns ``LN(z) - target`` as the output gradient
(the paper writes the squared norm without the 1/2; the difference is a factor 2 folded into eta).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Params = tuple[torch.Tensor, ...]

LN_EPS = 1e-6


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (the official TTT-MLP's choice)."""
    return F.gelu(x, approximate="tanh")


def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d GELU_tanh(x) / dx, written out so that outer gradients flow through it."""
    c = math.sqrt(2.0 / math.pi)
    u = c * (x + 0.044715 * x**3)
    t = torch.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)


def head_layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    """LayerNorm over the last axis with a per-head affine map: z (B, H, n, d), weight/bias (H, d)."""
    mu = z.mean(-1, keepdim=True)
    var = z.var(-1, keepdim=True, unbiased=False)
    zhat = (z - mu) / torch.sqrt(var + eps)
    return weight[None, :, None, :] * zhat + bias[None, :, None, :]


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float = LN_EPS) -> torch.Tensor:
    """Gradient of ``1/2 ||LN(z) - target||^2`` with respect to z, per token (closed form).

    z, target: (B, H, n, d); weight, bias: (H, d). Returns (B, H, n, d). The tests check it against
    autograd through :func:`head_layer_norm`.
    """
    d = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(z.var(-1, keepdim=True, unbiased=False) + eps)
    zhat = (z - mu) / std
    w = weight[None, :, None, :]
    g_hat = (w * zhat + bias[None, :, None, :] - target) * w  # dL/dzhat
    return (d * g_hat - g_hat.sum(-1, keepdim=True) - zhat * (g_hat * zhat).sum(-1, keepdim=True)) / (d * std)


def num_layers(params: Params) -> int:
    if len(params) not in (2, 4):
        raise ValueError(f"params: expected (W1, b1) or (W1, b1, W2, b2), got {len(params)} tensors")
    return len(params) // 2


def inner_apply(params: Params, x: torch.Tensor) -> torch.Tensor:
    """``f(x; W)`` for weights shared by all n tokens: x (B, H, n, d) -> (B, H, n, d)."""
    n_layers = num_layers(params)
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        x = x @ w + b
        if layer < n_layers - 1:
            x = gelu(x)
    return x


def inner_loss(params: Params, k: torch.Tensor, v: torch.Tensor, ln_weight: torch.Tensor,
               ln_bias: torch.Tensor) -> torch.Tensor:
    """Sum over batch, heads and tokens of ``1/2 ||LN(f(k; W)) - (v - k)||^2`` (a scalar)."""
    return 0.5 * (head_layer_norm(inner_apply(params, k), ln_weight, ln_bias) - (v - k)).pow(2).sum()


def inner_token_grads(params: Params, k: torch.Tensor, v: torch.Tensor, ln_weight: torch.Tensor,
                      ln_bias: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-token gradients of the inner loss at one set of weights, in factored form.

    Returns ``(xs, gs)``: for each inner layer l, its input ``xs[l]`` (B, H, n, d_in) and the gradient
    of token t's loss with respect to its pre-activation ``gs[l]`` (B, H, n, d_out). The gradient of
    token t's loss with respect to ``W_l`` is the outer product ``xs[l][t]^T gs[l][t]`` and with
    respect to ``b_l`` it is ``gs[l][t]``; nothing of size d x d per token is formed here.
    """
    n_layers = num_layers(params)
    xs, zs = [], []
    x = k
    for layer in range(n_layers):
        xs.append(x)
        z = x @ params[2 * layer] + params[2 * layer + 1]
        zs.append(z)
        x = gelu(z) if layer < n_layers - 1 else z
    g = ln_l2_grad(zs[-1], v - k, ln_weight, ln_bias)
    gs = [g]
    for layer in range(n_layers - 1, 0, -1):
        g = (g @ params[2 * layer].transpose(-1, -2)) * gelu_grad(zs[layer - 1])
        gs.insert(0, g)
    return xs, gs

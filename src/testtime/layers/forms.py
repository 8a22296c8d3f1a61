"""The three forms of a TTT layer's inner loop, which compute the same function (Sun et al., 2024, Sec. 2.4-2.5).

Mini-batch gradient descent on the inner loss (Eq. 6 of the paper with the official code's optional
position scale): for token t at position i = t mod b of its mini-batch, which starts at token t0 with
weights W_{t0},

    W_t = W_{t0} - s_i * sum_{j=t0..t} eta_j * grad l(W_{t0}; x_j),        z_t = q_t + LN(f(q_t; W_t)),

and the next mini-batch starts from ``W_{t0+b} = W_{t0} - s_{b-1} * sum_{j in mini-batch} eta_j grad_j``.
``s_i = 1`` in the paper; ``s_i = max(1/(i+1) + a_i, 0)`` with a learnable ``a`` (zeros at start) in
the official code ("token_idx"). b = 1 is pure online gradient descent, b = L pure batch.

* :func:`ttt_sequential` -- the reference: one token at a time, the gradient of that token's loss by
  ``torch.autograd.grad`` (with ``create_graph`` so outer gradients flow through it).
* ``form="primal"`` -- per mini-batch, all per-token gradients at W_{t0} at once, accumulated with a
  cumulative sum, materialising the weights W_t of every token (B, H, n, d_in, d_out).
* ``form="dual"`` -- the same outputs without per-token weights: ``q_i W_t = q_i W_{t0} - s_i sum_j
  eta_j (q_i . x_j) g_j``, a causal (lower-triangular) attention-like matrix per inner layer.

:func:`ttt_scan` runs either mini-batch form over any length and from any :class:`InnerState`, so a
sequence whose length is not a multiple of b ends in a partial mini-batch (handled exactly, as the
official code's "remainder"), and decoding continues a partial mini-batch from a cached state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from testtime.layers.inner import Params, gelu, head_layer_norm, inner_apply, inner_loss, inner_token_grads, num_layers

FORMS = ("sequential", "primal", "dual")


@dataclass(frozen=True)
class InnerState:
    """Where the inner loop stands: a cache of the inner weights for decoding.

    ``params``: the weights W_{t0} at the start of the current mini-batch, each (B, H, ...);
    ``grad_sum``: ``sum_j eta_j grad_j`` over the ``offset`` tokens of the current mini-batch already
    seen (None when ``offset == 0``).
    """

    params: Params
    grad_sum: Params | None = None
    offset: int = 0


def _check(q, k, v, eta, state, mini_batch_size, scale) -> None:
    if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size: must be a positive integer, got {mini_batch_size!r}")
    if q.ndim != 4:
        raise ValueError(f"q: expected (B, H, L, d), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name}: expected the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    if eta.shape != q.shape[:3]:
        raise ValueError(f"eta: expected (B, H, L) = {tuple(q.shape[:3])}, got {tuple(eta.shape)}")
    num_layers(state.params)
    if state.params[0].shape[:2] != q.shape[:2] or state.params[0].shape[2] != q.shape[3]:
        raise ValueError(f"state.params: W1 of shape {tuple(state.params[0].shape)} does not fit q {tuple(q.shape)}")
    if not 0 <= state.offset < mini_batch_size:
        raise ValueError(f"state.offset: must be in [0, {mini_batch_size}), got {state.offset}")
    if (state.offset > 0) != (state.grad_sum is not None):
        raise ValueError("state.grad_sum: must be given exactly when state.offset > 0")
    if scale is not None and scale.shape != (mini_batch_size,):
        raise ValueError(f"scale: expected ({mini_batch_size},), got {tuple(scale.shape)}")


def _scale_at(scale: torch.Tensor | None, start: int, n: int) -> torch.Tensor | float:
    return 1.0 if scale is None else scale[start:start + n]


def _finish(state: InnerState, sums: Params, n: int, b: int, scale: torch.Tensor | None) -> InnerState:
    """State after n more tokens whose accumulated update is ``sums``."""
    offset = state.offset + n
    if offset < b:
        return InnerState(state.params, sums, offset)
    s_last = 1.0 if scale is None else scale[b - 1]
    return InnerState(tuple(p - s_last * g for p, g in zip(state.params, sums)))


def _primal_chunk(q, k, v, eta, state, ln_weight, ln_bias, s):
    """Primal form on n tokens within one mini-batch: per-token weights (B, H, n, d_in, d_out)."""
    xs, gs = inner_token_grads(state.params, k, v, ln_weight, ln_bias)
    s = s if isinstance(s, float) else s[None, None, :, None, None]
    weights, sums = [], []
    for layer, (x, g) in enumerate(zip(xs, gs)):
        acc_w = torch.einsum("bhn,bhni,bhnj->bhnij", eta, x, g).cumsum(2)  # (B, H, n, d_in, d_out)
        acc_b = (eta[..., None] * g).cumsum(2).unsqueeze(-2)  # (B, H, n, 1, d_out)
        if state.grad_sum is not None:
            acc_w = acc_w + state.grad_sum[2 * layer].unsqueeze(2)
            acc_b = acc_b + state.grad_sum[2 * layer + 1].unsqueeze(2)
        weights += [state.params[2 * layer].unsqueeze(2) - s * acc_w,
                    state.params[2 * layer + 1].unsqueeze(2) - s * acc_b]
        sums += [acc_w[:, :, -1], acc_b[:, :, -1]]
    z = inner_apply(tuple(weights), q.unsqueeze(-2)).squeeze(-2)  # (B, H, n, d): token t uses W_t
    return q + head_layer_norm(z, ln_weight, ln_bias), tuple(sums)


def _dual_chunk(q, k, v, eta, state, ln_weight, ln_bias, s):
    """Dual form on n tokens within one mini-batch: no per-token weights."""
    xs, gs = inner_token_grads(state.params, k, v, ln_weight, ln_bias)
    n = q.shape[2]
    s = s if isinstance(s, float) else s[None, None, :, None]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    coeff = torch.where(causal, eta.unsqueeze(-2), 0.0)  # (B, H, n, n): [i, j] = eta_j for j <= i
    n_layers = len(xs)
    x_test, sums = q, []
    for layer, (x, g) in enumerate(zip(xs, gs)):
        w, b = state.params[2 * layer], state.params[2 * layer + 1]
        update = (coeff * (x_test @ x.transpose(-1, -2) + 1.0)) @ g  # (B, H, n, d_out); +1 is the bias
        if state.grad_sum is not None:
            update = update + x_test @ state.grad_sum[2 * layer] + state.grad_sum[2 * layer + 1]
        z = x_test @ w + b - s * update
        x_test = gelu(z) if layer < n_layers - 1 else z
        eg = eta.unsqueeze(-1) * g
        sum_w, sum_b = x.transpose(-1, -2) @ eg, eg.sum(2, keepdim=True)
        if state.grad_sum is not None:
            sum_w, sum_b = sum_w + state.grad_sum[2 * layer], sum_b + state.grad_sum[2 * layer + 1]
        sums += [sum_w, sum_b]
    return q + head_layer_norm(x_test, ln_weight, ln_bias), tuple(sums)


def ttt_sequential(q, k, v, eta, state, *, ln_weight, ln_bias, mini_batch_size, scale=None):
    """The reference: a plain loop over tokens with autograd for each token's inner gradient.

    Same arguments and result as :func:`ttt_scan`. Slow (one autograd call per token); for tests.
    """
    _check(q, k, v, eta, state, mini_batch_size, scale)
    leaves = (q, k, v, eta, ln_weight, ln_bias, *state.params, *(state.grad_sum or ()))
    leaves += (scale,) if scale is not None else ()
    outer = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
    start, acc, offset = list(state.params), state.grad_sum, state.offset
    outs = []
    for t in range(q.shape[2]):
        with torch.enable_grad():
            at = [p if outer and p.requires_grad else p.detach().requires_grad_(True) for p in start]
            loss = inner_loss(tuple(at), k[:, :, t:t + 1], v[:, :, t:t + 1], ln_weight, ln_bias)
            grads = torch.autograd.grad(loss, at, create_graph=outer)
        e = eta[:, :, t, None, None]  # (B, H, 1, 1)
        acc = tuple(e * g if acc is None else a + e * g for a, g in zip(acc or grads, grads))
        s = 1.0 if scale is None else scale[offset]
        weights = tuple(p - s * a for p, a in zip(start, acc))
        z = inner_apply(weights, q[:, :, t:t + 1])
        outs.append(q[:, :, t:t + 1] + head_layer_norm(z, ln_weight, ln_bias))
        offset += 1
        if offset == mini_batch_size:
            start, acc, offset = list(weights), None, 0
    return torch.cat(outs, 2), InnerState(tuple(start), acc, offset)


def ttt_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, state: InnerState, *,
             ln_weight: torch.Tensor, ln_bias: torch.Tensor, mini_batch_size: int, form: str = "dual",
             scale: torch.Tensor | None = None) -> tuple[torch.Tensor, InnerState]:
    """Run the inner loop over a sequence and return ``(z, final_state)``.

    Args:
        q, k, v: test, training and label views, (B, H, L, d).
        eta: per-head, per-token inner learning rates, (B, H, L).
        state: where to start (:class:`InnerState`; a fresh one holds the initial weights W_0).
        ln_weight, ln_bias: the inner LayerNorm's per-head affine map, (H, d).
        mini_batch_size: b. Any L is valid; a trailing partial mini-batch leaves ``offset > 0``.
        form: ``"sequential"``, ``"primal"`` or ``"dual"`` (all three compute the same z).
        scale: optional position scale s (b,) (the official code's token_idx); None means s = 1.

    Returns z = q + LN(f(q; W_t)) of shape (B, H, L, d) and the state after the last token.

    Example::

        state = InnerState((W1.expand(B, -1, -1, -1), b1.expand(B, -1, -1, -1)))
        z, state = ttt_scan(q, k, v, eta, state, ln_weight=w, ln_bias=b, mini_batch_size=16)
    """
    if form not in FORMS:
        raise ValueError(f"form: must be one of {', '.join(FORMS)}, got {form!r}")
    if form == "sequential":
        return ttt_sequential(q, k, v, eta, state, ln_weight=ln_weight, ln_bias=ln_bias,
                              mini_batch_size=mini_batch_size, scale=scale)
    _check(q, k, v, eta, state, mini_batch_size, scale)
    chunk = _dual_chunk if form == "dual" else _primal_chunk
    outs, pos, length = [], 0, q.shape[2]
    while pos < length:
        n = min(mini_batch_size - state.offset, length - pos)
        sl = slice(pos, pos + n)
        s = _scale_at(scale, state.offset, n)
        out, sums = chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], eta[:, :, sl], state, ln_weight, ln_bias, s)
        outs.append(out)
        state = _finish(state, sums, n, mini_batch_size, scale)
        pos += n
    return (torch.cat(outs, 2) if outs else q.clone()), state

"""The mini-batch primal and dual forms against the plain sequential loop (autograd per token).

Tolerance: float64, max abs difference <= 1e-10 for outputs, final states and gradients (observed
differences are ~1e-14; the forms sum the same terms in different orders).
"""

from __future__ import annotations

import pytest
import torch

from testtime.layers.forms import InnerState, ttt_scan, ttt_sequential
from testtime.layers.inner import head_layer_norm, inner_apply, inner_loss, ln_l2_grad

TOL = 1e-10
B, H, L, D = 2, 2, 12, 4


def _inputs(kind: str, mini_batch_size: int, with_scale: bool, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    hid = 4 * D if kind == "mlp" else D
    params = (r(B, H, D, hid, s=0.3), r(B, H, 1, hid, s=0.1))
    if kind == "mlp":
        params += (r(B, H, hid, D, s=0.3), r(B, H, 1, D, s=0.1))
    eta = (0.5 * torch.rand(B, H, L, generator=g, dtype=dtype)).requires_grad_()
    scale = torch.rand(mini_batch_size, generator=g, dtype=dtype).requires_grad_() if with_scale else None
    return dict(q=r(B, H, L, D), k=r(B, H, L, D), v=r(B, H, L, D), eta=eta, params=params,
                ln_weight=(1 + 0.1 * torch.randn(H, D, generator=g, dtype=dtype)).requires_grad_(),
                ln_bias=r(H, D, s=0.1), scale=scale)


def _run(inp, form, mini_batch_size):
    return ttt_scan(inp["q"], inp["k"], inp["v"], inp["eta"], InnerState(inp["params"]), ln_weight=inp["ln_weight"],
                    ln_bias=inp["ln_bias"], mini_batch_size=mini_batch_size, form=form, scale=inp["scale"])


def _leaves(inp):
    return [t for t in (inp["q"], inp["k"], inp["v"], inp["eta"], *inp["params"], inp["ln_weight"], inp["ln_bias"],
                        inp["scale"]) if t is not None]


def test_ln_l2_grad_is_the_gradient_of_the_inner_loss():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, H, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    w, b = 1 + torch.randn(H, D, generator=g, dtype=torch.float64), torch.randn(H, D, generator=g, dtype=torch.float64)
    (auto,) = torch.autograd.grad(0.5 * (head_layer_norm(z, w, b) - target).pow(2).sum(), z)
    torch.testing.assert_close(ln_l2_grad(z, target, w, b), auto, atol=1e-12, rtol=0)


# b = 1 (pure online), 3 and 4 (divide L), 5 (ends in a partial mini-batch), 12 = L (pure batch)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("mini_batch_size", [1, 3, 4, 5, L])
@pytest.mark.parametrize("with_scale", [False, True], ids=["s=1", "scaled"])
def test_primal_and_dual_equal_sequential_forward_and_gradients(kind, mini_batch_size, with_scale):
    inp = _inputs(kind, mini_batch_size, with_scale)
    cot = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    results = {}
    for form in ("sequential", "primal", "dual"):
        z, state = _run(inp, form, mini_batch_size)
        # a scalar that depends on the outputs and on the final inner state (the decoding cache)
        objective = (z * cot).sum() + sum(p.square().sum() for p in state.params)
        results[form] = (z, state, torch.autograd.grad(objective, _leaves(inp)))
    z_ref, state_ref, grads_ref = results["sequential"]
    assert state_ref.offset == L % mini_batch_size
    for form in ("primal", "dual"):
        z, state, grads = results[form]
        assert (z - z_ref).abs().max() <= TOL
        assert state.offset == state_ref.offset
        for p, p_ref in zip(state.params, state_ref.params):
            assert (p - p_ref).abs().max() <= TOL
        for a, b in zip(state.grad_sum or (), state_ref.grad_sum or ()):
            assert (a - b).abs().max() <= TOL
        for g, g_ref in zip(grads, grads_ref):
            assert (g - g_ref).abs().max() <= TOL * max(1.0, g_ref.abs().max().item())


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_pure_batch_final_weights_are_one_gradient_step_on_the_summed_loss(kind):
    """b = L: W_L = W_0 - sum_j eta_j grad l_j(W_0), computed here as one autograd call on sum_j eta_j l_j."""
    inp = _inputs(kind, L, with_scale=False)
    _, state = _run(inp, "dual", L)
    w0 = [p.detach().clone().requires_grad_() for p in inp["params"]]
    k, v, eta = inp["k"].detach(), inp["v"].detach(), inp["eta"].detach()
    lw, lb = inp["ln_weight"].detach(), inp["ln_bias"].detach()
    # the eta-weighted sum of every token's loss at W_0: per (batch, head) its gradient is sum_j eta_j grad_j
    per_token = 0.5 * (head_layer_norm(inner_apply(tuple(w0), k), lw, lb) - (v - k)).pow(2).sum(-1)  # (B, H, L)
    total = (per_token * eta).sum()
    grads = torch.autograd.grad(total, w0)
    for p, p0, g in zip(state.params, w0, grads):
        assert (p - (p0 - g)).abs().max() <= TOL


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_pure_online_is_plain_gradient_descent_token_by_token(kind):
    """b = 1 with s = 1: W_t = W_{t-1} - eta_t grad l_t(W_{t-1}), written out here without the library's loop."""
    inp = _inputs(kind, 1, with_scale=False)
    z, _ = _run(inp, "dual", 1)
    w = [p.detach() for p in inp["params"]]
    lw, lb = inp["ln_weight"].detach(), inp["ln_bias"].detach()
    for t in range(L):
        w = [p.clone().requires_grad_() for p in w]
        sl = slice(t, t + 1)
        grads = torch.autograd.grad(inner_loss(tuple(w), inp["k"][:, :, sl].detach(), inp["v"][:, :, sl].detach(),
                                               lw, lb), w)
        w = [p.detach() - inp["eta"][:, :, t].detach()[..., None, None] * g for p, g in zip(w, grads)]
        q = inp["q"][:, :, sl].detach()
        expected = q + head_layer_norm(inner_apply(tuple(w), q), lw, lb)
        assert (z[:, :, sl].detach() - expected).abs().max() <= TOL


@pytest.mark.parametrize("form", ["sequential", "primal", "dual"])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_gradcheck_through_the_inner_loop(form, kind):
    g = torch.Generator().manual_seed(3)
    dt = torch.float64
    hid = 2 * 2 if kind == "mlp" else 2
    shapes = [(1, 1, 5, 2)] * 3 + [(1, 1, 5), (1, 1, 2, hid), (1, 1, 1, hid)]
    if kind == "mlp":
        shapes += [(1, 1, hid, 2), (1, 1, 1, 2)]
    shapes += [(1, 2), (1, 2), (2,)]
    args = [(0.5 * torch.randn(*s, generator=g, dtype=dt)).requires_grad_() for s in shapes]
    args[3] = (0.3 * torch.rand(1, 1, 5, generator=g, dtype=dt)).requires_grad_()
    args[-3] = (1 + 0.1 * torch.randn(1, 2, generator=g, dtype=dt)).requires_grad_()
    args[-1] = torch.rand(2, generator=g, dtype=dt).requires_grad_()

    def fn(q, k, v, eta, *rest):
        *params, lw, lb, scale = rest
        z, state = ttt_scan(q, k, v, eta, InnerState(tuple(params)), ln_weight=lw, ln_bias=lb, mini_batch_size=2,
                            form=form, scale=scale)
        return z, *state.params

    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["sequential", "primal", "dual"])
def test_causal_within_and_across_mini_batches(form):
    inp = _inputs("mlp", 4, with_scale=True)
    with torch.no_grad():
        z, _ = _run(inp, form, 4)
        for t in (1, 4, 6, L - 2):  # inside a mini-batch, on a boundary, across
            changed = {**inp}
            for name in ("q", "k", "v"):
                changed[name] = inp[name].clone()
                changed[name][:, :, t + 1:] += 3.0
            changed["eta"] = inp["eta"].clone()
            changed["eta"][:, :, t + 1:] *= 2.0
            z2, _ = _run(changed, form, 4)
            assert (z2[:, :, :t + 1] - z[:, :, :t + 1]).abs().max() <= 1e-13
            assert (z2[:, :, t + 1:] - z[:, :, t + 1:]).abs().max() > 1e-3


def test_state_resumes_a_partial_mini_batch():
    inp = _inputs("linear", 4, with_scale=True)
    full, final = _run(inp, "dual", 4)
    state = InnerState(inp["params"])
    pieces = []
    for a, b, form in ((0, 3, "dual"), (3, 4, "primal"), (4, 9, "sequential"), (9, L, "primal")):
        z, state = ttt_scan(inp["q"][:, :, a:b], inp["k"][:, :, a:b], inp["v"][:, :, a:b], inp["eta"][:, :, a:b],
                            state, ln_weight=inp["ln_weight"], ln_bias=inp["ln_bias"], mini_batch_size=4,
                            form=form, scale=inp["scale"])
        pieces.append(z)
    assert (torch.cat(pieces, 2) - full).abs().max() <= TOL
    for p, p_ref in zip(state.params, final.params):
        assert (p - p_ref).abs().max() <= TOL


def test_bad_arguments_are_named():
    inp = _inputs("linear", 4, with_scale=False)
    base = dict(ln_weight=inp["ln_weight"], ln_bias=inp["ln_bias"])
    q, k, v, eta, st = inp["q"], inp["k"], inp["v"], inp["eta"], InnerState(inp["params"])
    with pytest.raises(ValueError, match="mini_batch_size"):
        ttt_scan(q, k, v, eta, st, mini_batch_size=0, **base)
    with pytest.raises(ValueError, match="^k:"):
        ttt_scan(q, k[:, :, :3], v, eta, st, mini_batch_size=4, **base)
    with pytest.raises(ValueError, match="^eta:"):
        ttt_scan(q, k, v, eta[..., :3], st, mini_batch_size=4, **base)
    with pytest.raises(ValueError, match="^form:"):
        ttt_scan(q, k, v, eta, st, mini_batch_size=4, form="fast", **base)
    with pytest.raises(ValueError, match="state.offset"):
        ttt_sequential(q, k, v, eta, InnerState(inp["params"], inp["params"], 4), mini_batch_size=4, **base)
    with pytest.raises(ValueError, match="^scale:"):
        ttt_scan(q, k, v, eta, st, mini_batch_size=4, scale=torch.ones(3, dtype=q.dtype), **base)

"""EATA: selection, weighting, Fisher regulariser and one SGD step checked against the paper
(Niu et al., ICML 2022, Eq. 3, 5, 6, 8) computed by hand."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from testtime.methods import create_method
from testtime.methods.eata import EATAConfig
from testtime.models import create_model


@pytest.fixture
def tiny(make_tiny):
    """``tiny(seed=0)``: the conftest model with BN weights in [0.5, 1.5], biases in [-0.2, 0.2] and the
    classifier x15: confident enough that part of a batch passes E < 0.4 ln 3."""
    return functools.partial(make_tiny, weight=(0.5, 1.5), bias=(-0.2, 0.2), fc_scale=15.0)

def test_paper_defaults(tiny):
    c = EATAConfig()
    assert (c.d_margin, c.fisher_alpha, c.e_margin_scale, c.e_margin) == (0.05, 2000.0, 0.4, None)
    assert (c.optimizer, c.lr, c.momentum, c.steps) == ("sgd", 0.00025, 0.9, 1)
    m = create_method("eata", tiny())
    assert m.e0(1000) == pytest.approx(0.4 * math.log(1000))


def reference(ref, src, xs, lr, alpha, d_margin, tiny_forward, entropy):
    """EATA written from the paper (Eq. 3, 5, 6, 8) with plain tensors; returns per-step records."""
    e0 = 0.4 * math.log(3)
    theta0 = [ref.bn.weight.detach().clone(), ref.bn.bias.detach().clone()]
    # Fisher (Eq. 8, as the official code computes it): mean over batches of grad^2 of the CE to pseudo-labels.
    fisher = [torch.zeros_like(t) for t in theta0]
    for x in src:
        g, b = (t.clone().requires_grad_(True) for t in theta0)
        out = tiny_forward(ref, x, g, b)
        ce = -(out.log_softmax(1).gather(1, out.argmax(1, keepdim=True))).mean()
        for f, gr in zip(fisher, torch.autograd.grad(ce, [g, b])):
            f += gr**2 / len(src)
    params, buf, probs_avg, steps = [t.clone() for t in theta0], None, None, []
    for x in xs:
        g, b = (t.clone().requires_grad_(True) for t in params)
        out = tiny_forward(ref, x, g, b)
        ent = entropy(out)
        reliable = ent < e0  # Eq. 3
        sel = reliable.clone()
        p = out.detach().softmax(1)
        cos = None
        if probs_avg is not None:  # Eq. 5: drop samples too similar to the running mean prediction
            cos = (p @ probs_avg) / (p.norm(dim=1) * probs_avg.norm())
            sel &= cos.abs() < d_margin
        new = p[sel].mean(0)
        probs_avg = new if probs_avg is None else 0.9 * probs_avg + 0.1 * new
        w = 1.0 / torch.exp(ent[sel].detach() - e0)  # Eq. 6
        loss = (w * ent[sel]).mean()
        loss = loss + alpha * sum((f * (q - t0) ** 2).sum() for f, q, t0 in zip(fisher, (g, b), theta0))  # Eq. 8
        grads = torch.autograd.grad(loss, [g, b])
        # SGD with momentum 0.9 (dampening 0): buf = 0.9 buf + grad; p -= lr buf.
        buf = list(grads) if buf is None else [0.9 * u + gr for u, gr in zip(buf, grads)]
        params = [q.detach() - lr * u for q, u in zip((g, b), buf)]
        steps.append(dict(logits=out.detach(), reliable=reliable, sel=sel, cos=cos, probs=probs_avg, params=params))
    return torch.cat(fisher), steps


def test_two_steps_match_the_paper_computed_by_hand(tiny, colour_batch, tiny_forward, entropy):
    lr, alpha = 0.1, 5.0
    src = [colour_batch(10, 8), colour_batch(11, 8)]
    xs = [colour_batch(1), colour_batch(2)]
    # Pick epsilon so that the redundancy filter of step 2 splits the reliable samples (the tiny random
    # model's predictions are all alike, so the paper's 0.05 would drop them all).
    _, pre = reference(tiny(), src, xs, lr, alpha, 1.0, tiny_forward, entropy)  # d_margin = 1.0
    cos2 = pre[1]["cos"][pre[1]["reliable"]]
    d_margin = float(cos2.median())
    fisher, steps = reference(tiny(), src, xs, lr, alpha, d_margin, tiny_forward, entropy)

    model = tiny()
    m = create_method("eata", model, lr=lr, fisher_alpha=alpha, d_margin=d_margin)
    assert m.compute_fisher([src[0], (src[1], torch.zeros(8, dtype=torch.long))]) == 16
    torch.testing.assert_close(m.fisher, fisher, rtol=1e-5, atol=1e-9)
    for x, st in zip(xs, steps):
        logits = m(x)
        torch.testing.assert_close(logits, st["logits"], rtol=1e-5, atol=1e-5)  # predicted before the update
        assert 0 < int(st["reliable"].sum()) < len(x), "the batch should exercise both sides of Eq. 3"
        assert (m.last_reliable, m.last_selected) == (int(st["reliable"].sum()), int(st["sel"].sum()))
        torch.testing.assert_close(m.model_probs, st["probs"])
        torch.testing.assert_close(model.bn.weight.detach(), st["params"][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.bn.bias.detach(), st["params"][1], rtol=1e-5, atol=1e-6)
    assert 0 < int(steps[1]["sel"].sum()) < int(steps[1]["reliable"].sum()), "Eq. 5 should drop some"
    # Step 2 moved away from theta0, so the regulariser is non-zero.
    assert float(m.regulariser().detach()) > 0


def test_no_fisher_warns_and_runs_as_eta(tiny, colour_batch):
    m = create_method("eata", tiny())
    with pytest.warns(UserWarning, match="no source data given to compute_fisher"):
        m(colour_batch(1))
    assert float(m.regulariser().detach()) == 0.0


def test_reset_keeps_fisher_and_restores_probs(tiny, colour_batch):
    m = create_method("eata", tiny(), lr=0.1)
    m.compute_fisher([colour_batch(10, 8)])
    fisher = m.fisher.clone()
    m(colour_batch(1))
    assert bool(m.has_probs)
    m.reset()
    assert not bool(m.has_probs) and torch.equal(m.fisher, fisher)


def test_bad_inputs_fail_clearly(tiny):
    with pytest.raises(ValueError, match="method 'eata' adapts BatchNorm layers but the model has none"):
        create_method("eata", create_model("resnet8", 4, norm="group"))
    m = create_method("eata", tiny())
    with pytest.raises(ValueError, match="source_batches is empty"):
        m.compute_fisher([])
    with pytest.raises(ValueError, match="must yield float tensors"):
        m.compute_fisher([torch.zeros(2, 3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="eata: need d_margin > 0"):
        create_method("eata", tiny(), d_margin=0.0)

"""Each loss against a plain-loop computation written from the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.losses import cross_encoder_alignment, cross_entropy, nt_xent


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))  # Eq. 2


def _eq1_loop(h1, h2, tau, symmetric):
    """Eq. 1 as printed, one anchor at a time (and its mirror for the symmetric form)."""
    b = h1.shape[0]
    allv = [h1[i] for i in range(b)] + [h2[i] for i in range(b)]
    terms = []
    anchors = [(h1[i], h2[i], i) for i in range(b)]
    if symmetric:
        anchors += [(h2[i], h1[i], b + i) for i in range(b)]
    for a, p, ai in anchors:
        den = sum(math.exp(_cos(a, s) / tau) for j, s in enumerate(allv) if j != ai)
        terms.append(-math.log(math.exp(_cos(a, p) / tau) / den))
    return sum(terms) / len(terms)


def _eq4_loop(h1, h2, w, tau):
    """Eq. 4 as printed: anchors h_hat_i and h_tilde_i, positive w_i, denominator H U W minus the anchor."""
    b = h1.shape[0]
    allv = [h1[i] for i in range(b)] + [h2[i] for i in range(b)] + [w[i] for i in range(b)]
    terms = []
    for ai in range(2 * b):
        a = allv[ai]
        den = sum(math.exp(_cos(a, s) / tau) for j, s in enumerate(allv) if j != ai)
        terms.append(-math.log(math.exp(_cos(a, w[ai % b]) / tau) / den))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_nt_xent_matches_plain_loop(tau, symmetric):
    g = torch.Generator().manual_seed(0)
    h1, h2 = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    got = float(nt_xent(h1, h2, tau, symmetric=symmetric))
    assert got == pytest.approx(_eq1_loop(h1, h2, tau, symmetric), rel=1e-9)


def test_nt_xent_small_tau_is_finite_and_matches():
    g = torch.Generator().manual_seed(1)
    h1, h2 = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g, dtype=torch.float64),
    )
    got = float(nt_xent(h1, h2, 0.05))
    assert got == pytest.approx(_eq1_loop(h1, h2, 0.05, True), rel=1e-7)
    out = nt_xent(h1.float() * 100, h2.float() * 100, 0.01)  # paper's tau, large norms
    assert torch.isfinite(out)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_alignment_matches_plain_loop(tau):
    g = torch.Generator().manual_seed(2)
    h1, h2, w = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    got = float(cross_encoder_alignment(h1, h2, w, tau))
    assert got == pytest.approx(_eq4_loop(h1, h2, w, tau), rel=1e-9)


def test_alignment_is_minimised_when_views_equal_supervised_features():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 16, generator=g)
    aligned = cross_encoder_alignment(w.clone(), w.clone(), w, 0.5)
    random = cross_encoder_alignment(torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g), w, 0.5)
    assert float(aligned) < float(random)


def test_cross_entropy_matches_plain_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    ref = 0.0
    for s in range(6):  # Eq. 3: -1/B sum_s sum_k y_sk log softmax_k
        p = torch.exp(logits[s]) / torch.exp(logits[s]).sum()
        ref -= math.log(float(p[labels[s]]))
    assert float(cross_entropy(logits, labels)) == pytest.approx(ref / 6, rel=1e-9)


def test_gradients_flow():
    h1 = torch.randn(4, 8, requires_grad=True)
    h2 = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(4, 8)
    (nt_xent(h1, h2, 0.5) + cross_encoder_alignment(h1, h2, w, 0.5)).backward()
    assert h1.grad is not None and torch.isfinite(h1.grad).all() and h1.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: nt_xent(torch.randn(1, 4), torch.randn(1, 4)), "at least 2"),
        (lambda: nt_xent(torch.randn(4, 4), torch.randn(4, 5)), "same shape"),
        (lambda: nt_xent(torch.randn(4, 4, 2), torch.randn(4, 4, 2)), "2-D"),
        (
            lambda: nt_xent(torch.ones(4, 4, dtype=torch.int64), torch.ones(4, 4, dtype=torch.int64)),
            "floating",
        ),
        (lambda: nt_xent(torch.randn(4, 4), torch.randn(4, 4), tau=0), "tau"),
        (
            lambda: cross_encoder_alignment(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 16)),
            "different output",
        ),
        (lambda: cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 3])), r"\[0, 3\)"),
        (lambda: cross_entropy(torch.randn(4, 3), torch.tensor([0.0, 1, 2, 0])), "int64"),
        (lambda: cross_entropy(torch.randn(4, 3), torch.tensor([0, 1])), "batch size"),
    ],
)
def test_bad_input_fails_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()

"""CORAL, covariance and mean alignment (TTT++, Deep CORAL) against numpy / plain loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testtime.losses.coral import coral, coral_loss, covariance, mean_alignment, mean_alignment_loss


def _feats(n=9, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_covariance_matches_numpy():
    f = _feats()
    np.testing.assert_allclose(covariance(f).numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-12, atol=1e-14)


def test_coral_matches_plain_double_sum():
    cs, ct = covariance(_feats(seed=1)), covariance(_feats(seed=2))
    d = cs.shape[0]
    plain = sum((float(cs[i, j]) - float(ct[i, j])) ** 2 for i in range(d) for j in range(d)) / (4 * d * d)
    assert float(coral(cs, ct)) == pytest.approx(plain, rel=1e-12)


def test_coral_loss_is_coral_of_batch_covariance_and_zero_on_itself():
    f, src = _feats(seed=3), covariance(_feats(n=30, seed=4))
    assert float(coral_loss(f, src)) == pytest.approx(float(coral(src, covariance(f))), rel=1e-12)
    assert float(coral_loss(f, covariance(f))) == 0.0


def test_mean_alignment_matches_plain_loop():
    f, mu = _feats(seed=5), torch.randn(5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    m = f.mean(0)
    plain = sum((float(mu[k]) - float(m[k])) ** 2 for k in range(5)) / 5
    assert float(mean_alignment_loss(f, mu)) == pytest.approx(plain, rel=1e-12)
    assert float(mean_alignment(mu, m)) == pytest.approx(plain, rel=1e-12)


def test_gradient_steps_align_statistics():
    """It optimises: moving features by gradient descent lowers both terms."""
    src = _feats(n=50, d=4, seed=7) * 2.0 + 1.0
    cs, ms = covariance(src), src.mean(0)
    f = _feats(n=20, d=4, seed=8).clone().requires_grad_(True)
    first = float((coral_loss(f, cs) + mean_alignment_loss(f, ms)).detach())
    opt = torch.optim.SGD([f], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        (coral_loss(f, cs) + mean_alignment_loss(f, ms)).backward()
        opt.step()
    assert float((coral_loss(f, cs) + mean_alignment_loss(f, ms)).detach()) < 0.5 * first


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: covariance(torch.zeros(1, 3)), "features: batch of 1"),
        (lambda: covariance(torch.zeros(3)), r"features: expected a 2-D tensor"),
        (lambda: coral(torch.zeros(3, 3), torch.zeros(4, 4)), r"cov_t: covariance is \(4, 4\)"),
        (lambda: coral(torch.zeros(3, 2), torch.zeros(3, 3)), "cov_s: expected a square"),
        (lambda: coral_loss(torch.zeros(4, 3), torch.zeros(5, 5)), r"source_cov: covariance is \(5, 5\)"),
        (lambda: mean_alignment_loss(torch.zeros(4, 3), torch.zeros(2)), r"source_mean: expected shape \(3,\)"),
        (lambda: mean_alignment(torch.zeros(3), torch.zeros(4)), "same shape"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()

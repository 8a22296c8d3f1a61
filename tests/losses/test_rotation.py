"""The rotation loss of TTT (Sun et al. 2020) against a plain computation."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.losses.rotation import rotation_loss


def _plain(logits, labels):
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        z = sum(math.exp(v) for v in row)
        total += -math.log(math.exp(row[y]) / z)
    return total / len(labels)


def test_matches_plain_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (12,), generator=g)
    assert float(rotation_loss(logits, labels)) == pytest.approx(_plain(logits, labels), rel=1e-12)


def test_uniform_logits_give_log4():
    assert float(rotation_loss(torch.zeros(8, 4), torch.arange(4).repeat(2))) == pytest.approx(math.log(4))


def test_gradient_descent_lowers_it():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, generator=g, requires_grad=True)
    x = torch.randn(20, 6, generator=g)
    y = torch.randint(0, 4, (20,), generator=g)
    first = float(rotation_loss(x @ w, y).detach())
    opt = torch.optim.SGD([w], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        rotation_loss(x @ w, y).backward()
        opt.step()
    assert float(rotation_loss(x @ w, y).detach()) < first


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64), r"logits: expected a \(N, 4\)"),
        (torch.zeros(4, 4), torch.zeros(3, dtype=torch.int64), r"labels: expected shape \(4,\)"),
        (torch.zeros(4, 4), torch.full((4,), 4), "labels: rotation labels must lie in 0..3"),
        (torch.zeros(4, 4), torch.zeros(4), "labels: expected integer"),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), "empty batch"),
    ],
)
def test_bad_input_names_the_argument(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        rotation_loss(logits, labels)

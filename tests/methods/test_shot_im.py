"""SHOT-IM: one SGD step of the information-maximisation loss checked against the paper computed by hand
(Liang et al., ICML 2020, Section 3.2): L = mean_i H(p_i) - H(mean_i p_i), encoder updated, classifier frozen."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from testtime.losses.information_maximization import information_maximization
from testtime.methods import create_method
from testtime.methods.shot_im import SHOTIMConfig
from testtime.models import create_model


def forward(m, x, conv_w, gamma, beta):
    """TinyNet with BN on the batch's own statistics, conv and BN affine given (so they can take gradients)."""
    h = F.conv2d(x, conv_w, padding=1)
    mu = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    h = (h - mu) / torch.sqrt(var + m.bn.eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return h.clamp_min(0).mean(dim=(2, 3)) @ m.fc.weight.detach().T + m.fc.bias.detach()


def test_defaults():
    c = SHOTIMConfig()
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.nesterov) == ("sgd", 1e-3, 0.9, 1e-3, True)
    assert (c.ent_par, c.epsilon, c.gent, c.steps) == (1.0, 1e-5, True, 1)


def test_im_loss_from_its_definition():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    p = logits.softmax(1)
    ent = -sum((p[:, k] * torch.log(p[:, k] + 1e-5)) for k in range(4)).mean()
    pb = p.mean(0)
    div = sum(pb[k] * math.log(float(pb[k]) + 1e-5) for k in range(4))
    loss, e, d = information_maximization(logits)
    torch.testing.assert_close((loss, e, d), (ent + div, ent, torch.as_tensor(div, dtype=torch.float32)))


def test_one_step_matches_hand_computed_nesterov_sgd(make_tiny, colour_batch):
    model = make_tiny(weight=(0.5, 1.5), bias=(-0.2, 0.2), fc_scale=4.0)
    ref = make_tiny(weight=(0.5, 1.5), bias=(-0.2, 0.2), fc_scale=4.0)
    x = colour_batch(3, n=8)
    lr = 0.05
    m = create_method("shot-im", model, lr=lr)
    assert sorted(m.adapted_parameter_names()) == ["model.bn.bias", "model.bn.weight", "model.conv.weight"]
    fc = (model.fc.weight.clone(), model.fc.bias.clone())
    running = (model.bn.running_mean.clone(), model.bn.running_var.clone())

    logits = m(x)

    params = [t.detach().clone().requires_grad_(True) for t in (ref.conv.weight, ref.bn.weight, ref.bn.bias)]
    out = forward(ref, x, *params)
    p = out.softmax(1)
    pb = p.mean(0)
    loss = -(p * torch.log(p + 1e-5)).sum(1).mean() + (pb * torch.log(pb + 1e-5)).sum()
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close(logits, out.detach(), rtol=1e-5, atol=1e-6)  # predicted before the update
    # SGD, first step, weight decay 1e-3, momentum 0.9, Nesterov: d = g + wd p; buf = d; p -= lr (d + 0.9 buf).
    for got, p0, g in zip((model.conv.weight, model.bn.weight, model.bn.bias), params, grads):
        d = g + 1e-3 * p0.detach()
        torch.testing.assert_close(got.detach(), p0.detach() - lr * 1.9 * d, rtol=1e-5, atol=1e-7)
    # The classifier and the stored BN statistics did not move; the IM loss went down.
    assert torch.equal(model.fc.weight, fc[0]) and torch.equal(model.fc.bias, fc[1])
    assert torch.equal(model.bn.running_mean, running[0]) and torch.equal(model.bn.running_var, running[1])
    new = forward(ref, x, model.conv.weight.detach(), model.bn.weight.detach(), model.bn.bias.detach())
    assert information_maximization(new)[0] < loss.detach()


def test_batch_of_one_fails_clearly_and_works_without_bn():
    m = create_method("shot-im", create_model("resnet8", 4, norm="group"))
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match=re.escape("method 'shot-im' needs batches of at least 2 images")):
        m(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="shot-im: need ent_par > 0"):
        create_method("shot-im", create_model("resnet8", 4), ent_par=0.0)

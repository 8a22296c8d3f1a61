"""MEMO: one adaptation per image checked against the paper (Zhang et al., NeurIPS 2022, Eq. 1-2)
computed by hand: marginal entropy over the views, one SGD step on all parameters, predict, reset."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from testtime.losses.marginal_entropy import marginal_entropy
from testtime.methods import create_method
from testtime.methods.memo import MEMOConfig
from testtime.transforms.augmix import AugMixConfig, augmix_views

NAMES = ["conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"]


@pytest.fixture
def tiny(make_tiny):
    """``tiny(seed=0)``: the conftest model with stored BN statistics (mean in [-0.1, 0.1], variance in
    [0.5, 1.5]) and the classifier x4."""
    return functools.partial(make_tiny, running_mean=(-0.1, 0.1), running_var=(0.5, 1.5), fc_scale=4.0)


def ref_forward(p, rm, rv, x, eps=1e-5):
    """Eval-mode model: BN with the stored statistics."""
    h = F.conv2d(x, p["conv.weight"], padding=1)
    h = (h - rm.view(1, -1, 1, 1)) / torch.sqrt(rv.view(1, -1, 1, 1) + eps)
    h = h * p["bn.weight"].view(1, -1, 1, 1) + p["bn.bias"].view(1, -1, 1, 1)
    return h.clamp_min(0).mean(dim=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]


def test_paper_defaults(tiny):
    c = MEMOConfig()
    assert (c.n_views, c.lr, c.optimizer, c.momentum, c.steps, c.weight_decay) == (32, 0.005, "sgd", 0.0, 1, 0.0)
    assert c.augmix == AugMixConfig() and c.augmix.severity == 1.0 and c.augmix.width == 3
    assert create_method("memo", tiny()).requirements.supports_batch_size_1


def test_each_image_adapted_from_the_source_and_predicted_after(tiny):
    lr, n, seed = 0.5, 6, 3
    model, ref = tiny(), tiny()
    src = {k: v.detach().clone() for k, v in ref.named_parameters()}
    rm, rv = ref.bn.running_mean.clone(), ref.bn.running_var.clone()
    m = create_method("memo", model, lr=lr, n_views=n, seed=seed)
    assert sorted(m.adapted_parameter_names()) == sorted(f"model.{k}" for k in NAMES)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    out = m(x)

    g = torch.Generator().manual_seed(seed)  # the method's generator, continued across the two images
    for i in range(2):
        views = augmix_views(x[i], n, g)  # (n, C, H, W)
        p = {k: v.clone().requires_grad_(True) for k, v in src.items()}  # every image starts at the source
        probs = ref_forward(p, rm, rv, views).softmax(1)  # (n, K)
        pbar = probs.mean(0)  # Eq. 1: the marginal over the views
        loss = -(pbar * torch.log(pbar)).sum()  # Eq. 2
        grads = torch.autograd.grad(loss, [p[k] for k in NAMES])
        new = {k: (p[k] - lr * gr).detach() for k, gr in zip(NAMES, grads)}  # SGD, no momentum
        want = ref_forward(new, rm, rv, x[i:i + 1])  # predicted after the update
        torch.testing.assert_close(out[i:i + 1], want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(want, ref_forward(src, rm, rv, x[i:i + 1]))
    got = dict(model.named_parameters())
    for k in NAMES:  # after the batch the model holds the last image's adaptation
        torch.testing.assert_close(got[k].detach(), new[k], rtol=1e-4, atol=1e-6)
    assert torch.equal(model.bn.running_mean, rm)  # eval mode: BN statistics untouched


def test_order_before_returns_the_source_prediction(tiny):
    model = tiny()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.eval()
        want = model(x)
    m = create_method("memo", model, n_views=4)
    torch.testing.assert_close(m.step(x, "before"), want)


def test_marginal_entropy_matches_plain_formula_and_is_finite():
    logits = torch.tensor([[50.0, -50.0, 0.0], [0.0, 1.0, 2.0]])
    loss, avg = marginal_entropy(logits)
    pbar = logits.softmax(1).mean(0)
    torch.testing.assert_close(loss, -(pbar * pbar.log()).sum())
    torch.testing.assert_close(avg.exp(), pbar)
    one_hot = marginal_entropy(torch.tensor([[1000.0, -1000.0]]))[0]
    assert torch.isfinite(one_hot) and float(one_hot) == pytest.approx(0.0, abs=1e-6)
    assert float(marginal_entropy(torch.zeros(4, 7))[0]) == pytest.approx(math.log(7))


def test_bad_inputs_fail_clearly(tiny):
    with pytest.raises(ValueError, match="memo: n_views must be >= 1"):
        create_method("memo", tiny(), n_views=0)
    with pytest.raises(ValueError, match="memo: x must be a float tensor"):
        create_method("memo", tiny())(torch.zeros(3, 8, 8))

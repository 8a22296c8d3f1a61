"""TENT: one adaptation step checked against the paper's update computed by hand (Wang et al., ICLR 2021)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from testtime.methods import create_method
from testtime.methods.tent import TentConfig
from testtime.models import create_model


@pytest.fixture
def tiny(make_tiny):
    """``tiny(seed=0)``: the conftest model with BN weights in [0.5, 1.5] and biases in [-0.2, 0.2]."""
    return functools.partial(make_tiny, weight=(0.5, 1.5), bias=(-0.2, 0.2))

def test_paper_defaults():
    c = TentConfig()
    assert (c.optimizer, c.lr, c.steps, c.weight_decay) == ("adam", 1e-3, 1, 0.0)


def test_one_step_matches_hand_computed_adam_update(tiny, tiny_forward, entropy):
    model = tiny()
    ref = tiny()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    lr = 0.05
    m = create_method("tent", model, lr=lr)
    assert sorted(m.adapted_parameter_names()) == ["model.bn.bias", "model.bn.weight"]
    running = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    conv_w, fc_w = model.conv.weight.clone(), model.fc.weight.clone()

    logits = m(x)

    # Eq. 2: L = mean_b H(softmax(f(x_b))), gradient w.r.t. (gamma, beta) only.
    gamma = ref.bn.weight.detach().clone().requires_grad_(True)
    beta = ref.bn.bias.detach().clone().requires_grad_(True)
    ref_logits = tiny_forward(ref, x, gamma, beta)
    loss = entropy(ref_logits).mean()
    g_gamma, g_beta = torch.autograd.grad(loss, [gamma, beta])
    torch.testing.assert_close(logits, ref_logits.detach(), rtol=1e-5, atol=1e-6)  # predicted before the update

    # Adam, first step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected: p -= lr * g / (|g| + eps).
    def adam1(p, g, eps=1e-8):
        m_hat = (1 - 0.9) * g / (1 - 0.9)
        v_hat = (1 - 0.999) * g * g / (1 - 0.999)
        return p - lr * m_hat / (torch.sqrt(v_hat) + eps)

    torch.testing.assert_close(model.bn.weight.detach(), adam1(gamma.detach(), g_gamma), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.bias.detach(), adam1(beta.detach(), g_beta), rtol=1e-5, atol=1e-6)
    # Nothing else moved: conv, classifier, stored BN statistics.
    assert torch.equal(model.conv.weight, conv_w) and torch.equal(model.fc.weight, fc_w)
    assert torch.equal(model.bn.running_mean, running[0]) and torch.equal(model.bn.running_var, running[1])
    # The update lowered the entropy of this batch.
    after = entropy(tiny_forward(ref, x, model.bn.weight.detach(), model.bn.bias.detach())).mean()
    assert after < loss.detach()


def test_needs_batchnorm_clear_error_before_work():
    model = create_model("resnet8", 4, norm="group")
    w = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="method 'tent' adapts BatchNorm layers but the model has none"):
        create_method("tent", model)
    assert all(torch.equal(v, w[k]) for k, v in model.state_dict().items())


def test_batch_of_one_runs_and_bad_batches_fail_clearly(tiny):
    m = create_method("tent", tiny())
    assert m(torch.rand(1, 3, 8, 8)).shape == (1, 3)
    with pytest.raises(ValueError, match="tent: x must be a float tensor"):
        m(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_entropy_of_uniform_is_log_c():
    from testtime.losses.entropy import softmax_entropy

    torch.testing.assert_close(softmax_entropy(torch.zeros(2, 5)), torch.full((2,), math.log(5)))
    with pytest.raises(ValueError, match="logits: expected a 2-D tensor"):
        softmax_entropy(torch.zeros(5))


class _HeadWithBN1d(torch.nn.Module):
    """conv -> BatchNorm2d -> pool -> linear -> BatchNorm1d -> linear: BN of both types."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn2d = torch.nn.BatchNorm2d(4)
        self.fc1 = torch.nn.Linear(4, 4)
        self.bn1d = torch.nn.BatchNorm1d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn1d(self.fc1(self.bn2d(self.conv(x)).mean((2, 3)))))


@pytest.mark.parametrize("name", ["tent", "eata"])
def test_bn_layer_types_all_by_default_or_2d_as_the_official_code(name):
    torch.manual_seed(0)
    everything = sorted(create_method(name, _HeadWithBN1d()).adapted_parameter_names())
    assert everything == ["model.bn1d.bias", "model.bn1d.weight", "model.bn2d.bias", "model.bn2d.weight"]
    model = _HeadWithBN1d()
    official = create_method(name, model, bn_layers="2d")  # DequanWang/tent, mr-eggplant/EATA collect_params
    assert sorted(official.adapted_parameter_names()) == ["model.bn2d.bias", "model.bn2d.weight"]
    assert model.bn1d.training and not model.bn1d.weight.requires_grad  # batch statistics, not adapted
    with pytest.raises(ValueError, match=r"bn_layers must be one of \['all', '2d'\], got '1d'"):
        create_method(name, _HeadWithBN1d(), bn_layers="1d")

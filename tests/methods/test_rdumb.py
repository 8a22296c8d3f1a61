"""RDumb: the ETA step (EATA Eq. 3, 5, 6 without Fisher) and the TENT step checked by hand, and the reset
to the source every N steps (Press et al., NeurIPS 2023)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from testtime.methods import create_method
from testtime.methods.rdumb import RDumbConfig
from testtime.models import create_model


@pytest.fixture
def tiny(make_tiny):
    """The conftest model with BN weights in [0.5, 1.5], biases in [-0.2, 0.2] and the classifier x15."""
    return functools.partial(make_tiny, weight=(0.5, 1.5), bias=(-0.2, 0.2), fc_scale=15.0)


def test_defaults():
    c = RDumbConfig()
    assert (c.base, c.reset_every, c.fisher_alpha, c.e_margin_scale, c.d_margin) == ("eata", 1000, 0.0, 0.4, 0.05)
    assert (c.optimizer, c.lr, c.momentum) == ("sgd", 0.00025, 0.9)


@pytest.mark.parametrize("base", ["eata", "tent"])
def test_first_step_matches_the_base_computed_by_hand(base, tiny, colour_batch, tiny_forward, entropy):
    x, lr = colour_batch(1), 0.1
    ref = tiny()
    g, b = (t.detach().clone().requires_grad_(True) for t in (ref.bn.weight, ref.bn.bias))
    out = tiny_forward(ref, x, g, b)
    ent = entropy(out)
    if base == "eata":  # ETA: E < 0.4 ln C (no redundancy filter on the first batch), weights exp(-(E - E_0))
        e0 = 0.4 * math.log(3)
        sel = ent < e0
        assert 0 < int(sel.sum()) < len(x)
        loss = (torch.exp(-(ent[sel].detach() - e0)) * ent[sel]).mean()
    else:
        loss = ent.mean()
    grads = torch.autograd.grad(loss, [g, b])
    model = tiny()
    m = create_method("rdumb", model, base=base, lr=lr)
    assert sorted(m.adapted_parameter_names()) == ["model.bn.bias", "model.bn.weight"]
    torch.testing.assert_close(m(x), out.detach(), rtol=1e-5, atol=1e-6)
    for got, p0, gr in zip((model.bn.weight, model.bn.bias), (g, b), grads):
        torch.testing.assert_close(got.detach(), p0.detach() - lr * gr, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", ["eata", "tent"])
def test_everything_is_reset_to_the_source_every_n_steps(base, tiny, colour_batch):
    xs = [colour_batch(i) for i in range(1, 6)]
    m = create_method("rdumb", tiny(), base=base, lr=0.1, reset_every=2)
    src = {k: v.clone() for k, v in m.state_dict().items() if k != "steps_done"}
    outs = [m(x) for x in xs[:2]]
    assert not torch.equal(m.model.bn.weight, src["model.bn.weight"])
    # Step 3 starts from the source: its prediction and update are those of a fresh method on x3.
    fresh = create_method("rdumb", tiny(), base=base, lr=0.1, reset_every=2)
    torch.testing.assert_close(m(xs[2]), fresh(xs[2]), rtol=0, atol=0)
    assert m.resets == 1 and int(m.steps_done) == 3
    for k, v in fresh.state_dict().items():
        if k != "steps_done":
            assert torch.equal(m.state_dict()[k], v), k
    torch.testing.assert_close(m(xs[3]), fresh(xs[3]), rtol=0, atol=0)
    m(xs[4])  # step 5: reset again
    assert m.resets == 2
    # reset() restarts the counter too.
    m.reset()
    assert int(m.steps_done) == 0
    torch.testing.assert_close(m(xs[0]), outs[0], rtol=0, atol=0)


def test_bad_input_fails_clearly(tiny):
    with pytest.raises(ValueError, match="method 'rdumb' adapts BatchNorm layers but the model has none"):
        create_method("rdumb", create_model("resnet8", 4, norm="group"))
    with pytest.raises(ValueError, match="rdumb: base must be one of eata, tent"):
        create_method("rdumb", tiny(), base="sar")
    with pytest.raises(ValueError, match="rdumb: reset_every must be >= 1"):
        create_method("rdumb", tiny(), reset_every=0)

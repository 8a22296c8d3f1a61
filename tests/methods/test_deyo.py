"""DeYO: the patch shuffle, the entropy and PLPD filters (Eq. 8), the weights (Eq. 10) and one SGD step
checked against the paper computed by hand (Lee et al., ICLR 2024)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from testtime.methods import create_method
from testtime.methods.deyo import DeYOConfig, patch_shuffle
from testtime.models import create_model


@pytest.fixture
def tiny(make_tiny):
    """The conftest model with BN weights in [0.5, 1.5], biases in [-0.2, 0.2] and the classifier x15."""
    return functools.partial(make_tiny, weight=(0.5, 1.5), bias=(-0.2, 0.2), fc_scale=15.0)


def test_defaults():
    c = DeYOConfig()
    assert (c.e_margin_scale, c.e0_scale, c.plpd_threshold, c.aug_type, c.patch_len) == (0.5, 0.4, 0.2, "patch", 4)
    assert (c.optimizer, c.lr, c.momentum, c.steps) == ("sgd", 0.00025, 0.9, 1)
    assert c.filter_ent and c.filter_plpd and c.reweight_ent and c.reweight_plpd


def test_patch_shuffle_permutes_a_grid_of_patches_per_image():
    x = torch.rand(3, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    y = patch_shuffle(x, 4, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    for b in range(3):
        grid = lambda t: [t[:, i * 2:(i + 1) * 2, j * 3:(j + 1) * 3] for i in range(4) for j in range(4)]  # noqa: E731
        src, out = grid(x[b]), grid(y[b])
        # Every output patch is one input patch, each used once.
        matches = [next(k for k, s in enumerate(src) if torch.equal(o, s)) for o in out]
        assert sorted(matches) == list(range(16))
    assert not torch.equal(x, y)
    torch.testing.assert_close(y, patch_shuffle(x, 4, torch.Generator().manual_seed(1)))  # seeded


def test_one_step_matches_the_paper_computed_by_hand(tiny, colour_batch, tiny_forward, entropy):
    x = colour_batch(1, n=16)
    lr, seed = 0.1, 0
    ln_c = math.log(3)

    def reference(tau_plpd):
        ref = tiny()
        g, b = (t.detach().clone().requires_grad_(True) for t in (ref.bn.weight, ref.bn.bias))
        out = tiny_forward(ref, x, g, b)
        ent = entropy(out)
        sel = ent < 0.5 * ln_c  # Eq. 8, entropy part
        xp = patch_shuffle(x[sel], 4, torch.Generator().manual_seed(seed))
        with torch.no_grad():  # x' goes through the model with its own batch statistics
            outp = tiny_forward(ref, xp, g.detach(), b.detach())
        p, pp = out[sel].detach().softmax(1), outp.softmax(1)
        y = p.argmax(1)
        plpd = p[torch.arange(len(y)), y] - pp[torch.arange(len(y)), y]  # Eq. 7
        keep = plpd > tau_plpd  # Eq. 8, PLPD part
        e = ent[sel][keep]
        w = torch.exp(-(e.detach() - 0.4 * ln_c)) + torch.exp(plpd[keep])  # Eq. 10
        loss = (w * e).mean()
        grads = torch.autograd.grad(loss, [g, b])
        new = [t.detach() - lr * gr for t, gr in zip((g, b), grads)]  # SGD momentum, first step: buf = grad
        return out.detach(), sel, plpd, keep, new

    _, sel, plpd, _, _ = reference(-2.0)
    assert 0 < int(sel.sum()) < len(x), "the batch should exercise both sides of the entropy filter"
    tau = float(plpd.median())  # split the reliable samples by PLPD
    out, sel, plpd, keep, new = reference(tau)
    assert 0 < int(keep.sum()) < int(sel.sum())

    model = tiny()
    conv = model.conv.weight.clone()
    m = create_method("deyo", model, lr=lr, plpd_threshold=tau, seed=seed)
    assert sorted(m.adapted_parameter_names()) == ["model.bn.bias", "model.bn.weight"]
    logits = m(x)
    torch.testing.assert_close(logits, out, rtol=1e-5, atol=1e-6)  # predicted before the update
    assert (m.last_reliable, m.last_selected) == (int(sel.sum()), int(keep.sum()))
    torch.testing.assert_close(model.bn.weight.detach(), new[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.bias.detach(), new[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(model.conv.weight, conv)


def test_nothing_selected_means_no_update(tiny, colour_batch):
    model = tiny()
    w = model.bn.weight.clone()
    m = create_method("deyo", model, plpd_threshold=2.0)  # a probability difference never exceeds 1
    m(colour_batch(1))
    assert m.last_selected == 0 and torch.equal(model.bn.weight, w)


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="method 'deyo' adapts the affine parameters of normalisation layers"):
        create_method("deyo", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)))
    with pytest.raises(ValueError, match="deyo: aug_type must be one of patch, pixel"):
        create_method("deyo", create_model("resnet8", 4), aug_type="occ")

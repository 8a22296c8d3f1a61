"""CoTTA: one step (pseudo-label, student update, EMA teacher, stochastic restore) checked against the
paper (Wang et al., CVPR 2022, Eq. 1-6) computed by hand."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.cotta import CoTTAConfig
from testtime.transforms.cotta_aug import CoTTAAugConfig, cotta_augment

NAMES = ["conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"]


@pytest.fixture
def tiny(make_tiny):
    """``tiny(seed=0)``: the conftest model with BN weights in [0.5, 1.5] and the classifier x4."""
    return functools.partial(make_tiny, weight=(0.5, 1.5), fc_scale=4.0)


def ref_forward(p, x, eps=1e-5):
    h = F.conv2d(x, p["conv.weight"], padding=1)
    mu = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    h = (h - mu) / torch.sqrt(var + eps) * p["bn.weight"].view(1, -1, 1, 1) + p["bn.bias"].view(1, -1, 1, 1)
    return h.clamp_min(0).mean(dim=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]


@pytest.fixture
def batch(colour_batch):
    """``batch(seed)``: 8 images, half noise, half a per-image colour."""
    return functools.partial(colour_batch, n=8, noise=0.5, cast=0.5)


def test_paper_defaults():
    c = CoTTAConfig()
    assert (c.mt, c.rst, c.ap, c.n_augmentations) == (0.999, 0.01, 0.92, 32)
    assert (c.optimizer, c.lr, c.steps) == ("adam", 1e-3, 1)
    assert c.aug == CoTTAAugConfig()


# ap = 1.0: the anchor is never confident enough, so the pseudo-label is the augmentation average.
# ap = 0.0: the plain teacher output; at the first step the teacher equals the student, so the gradient
# of Eq. 1 is ~0 (p - q = 0) and Adam would normalise rounding noise: that case is checked with SGD.
@pytest.mark.parametrize("ap,optimizer", [(1.0, "adam"), (0.0, "sgd")])
def test_one_step_matches_the_paper(ap, optimizer, tiny, batch):
    lr, mt, rst, n_aug, seed = 0.05, 0.9, 0.3, 4, 7
    model = tiny()
    src = {n: p.detach().clone() for n, p in tiny().named_parameters()}
    m = create_method("cotta", model, lr=lr, mt=mt, rst=rst, ap=ap, n_augmentations=n_aug, seed=seed,
                      optimizer=optimizer)
    x = batch(1)

    logits = m(x)

    g = torch.Generator().manual_seed(seed)  # the method's generator: augmentations first, then restore masks
    with torch.no_grad():
        conf = ref_forward(src, x).softmax(1).max(1).values.mean()  # anchor = source model (Eq. 4)
        if conf < ap:
            teacher = sum(ref_forward(src, cotta_augment(x, g)) for _ in range(n_aug)) / n_aug  # Eq. 3
        else:
            teacher = ref_forward(src, x)
    assert m.used_augmentation == bool(conf < ap)
    torch.testing.assert_close(logits, teacher, rtol=1e-5, atol=1e-5)  # CoTTA predicts with the pseudo-label

    p = {n: v.clone().requires_grad_(True) for n, v in src.items()}
    student = ref_forward(p, x)
    loss = -(teacher.softmax(1) * student.log_softmax(1)).sum(1).mean()  # Eq. 1
    grads = torch.autograd.grad(loss, [p[n] for n in NAMES])
    if optimizer == "adam":  # Adam, first step (bias-corrected): p -= lr * g / (|g| + eps)
        new = {n: (p[n] - lr * gr / (gr.abs() + 1e-8)).detach() for n, gr in zip(NAMES, grads)}
    else:  # SGD with momentum, first step: p -= lr * g
        new = {n: (p[n] - lr * gr).detach() for n, gr in zip(NAMES, grads)}
    ema = {n: mt * src[n] + (1 - mt) * new[n] for n in NAMES}  # Eq. 2 (teacher was the source)
    for n in NAMES:  # model.parameters() order: conv, bn, fc
        mask = torch.rand(src[n].shape, generator=g) < rst  # Eq. 5-6
        new[n] = torch.where(mask, src[n], new[n])

    got = dict(model.named_parameters())
    teacher_p = dict(m.teacher.named_parameters())
    anchor_p = dict(m.anchor.named_parameters())
    for n in NAMES:
        torch.testing.assert_close(got[n].detach(), new[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(teacher_p[n], ema[n], rtol=1e-5, atol=1e-6)
        assert torch.equal(anchor_p[n], src[n])
    restored = sum(int((got[n] == src[n]).sum()) for n in NAMES)
    assert restored > 0  # with p = 0.3 some weights went back to their source values


def test_reset_restores_teacher_and_anchor(tiny, batch):
    m = create_method("cotta", tiny(), n_augmentations=2, lr=0.05)
    t0 = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    m(batch(1))
    assert any(not torch.equal(v, t0[k]) for k, v in m.teacher.state_dict().items())
    m.reset()
    assert all(torch.equal(v, t0[k]) for k, v in m.teacher.state_dict().items())


def test_bad_config_fails_clearly(tiny):
    with pytest.raises(ValueError, match="cotta: need 0 <= mt <= 1"):
        create_method("cotta", tiny(), mt=1.5)
    with pytest.raises(ValueError, match="cotta: x must be a float tensor"):
        create_method("cotta", tiny())(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))

"""SAR: the reliable-sample filter, the two-pass SAM update and model recovery checked against the
paper (Niu et al., ICLR 2023, Eq. 2-5, Section 4) computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from testtime.methods import create_method
from testtime.methods.sar import SARConfig


class Tiny(nn.Module):
    def __init__(self, k: int = 3, width: int = 4, norm: str = "bn") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(width) if norm == "bn" else nn.GroupNorm(2, width)
        self.fc = nn.Linear(width, k)

    def forward(self, x):
        return self.fc(F.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def tiny(seed=0, norm="bn"):
    torch.manual_seed(seed)
    m = Tiny(norm=norm)
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-0.2, 0.2)
        m.fc.weight.mul_(15.0)
    return m


def ref_forward(m, x, gamma, beta, norm="bn"):
    """BN: statistics over (B, H, W) of the batch; GN (2 groups): over (C/2, H, W) of each image."""
    h = F.conv2d(x, m.conv.weight.detach(), padding=1)  # (B, 4, H, W)
    if norm == "bn":
        mu = h.mean(dim=(0, 2, 3), keepdim=True)
        var = ((h - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        h = (h - mu) / torch.sqrt(var + m.norm.eps)
    else:
        b, c, hh, ww = h.shape
        hg = h.reshape(b, 2, c // 2, hh, ww)  # (B, G, C/G, H, W)
        mu = hg.mean(dim=(2, 3, 4), keepdim=True)
        var = ((hg - mu) ** 2).mean(dim=(2, 3, 4), keepdim=True)
        h = ((hg - mu) / torch.sqrt(var + m.norm.eps)).reshape(b, c, hh, ww)
    h = h * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return h.clamp_min(0).mean(dim=(2, 3)) @ m.fc.weight.detach().T + m.fc.bias.detach()


def entropy(logits):
    p = torch.exp(logits - torch.logsumexp(logits, 1, keepdim=True))
    return -(p * torch.log(p)).sum(1)


def batch(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g) * 0.3 + torch.rand(n, 3, 1, 1, generator=g) * 0.7


def sar_reference(ref, x, params, lr, rho, e0, norm="bn"):
    """One SAR step from the paper: filter (Eq. 2), SAM perturbation (Eq. 4), re-filter, SGD at w (Eq. 5)."""
    g, b = (t.clone().requires_grad_(True) for t in params)
    out = ref_forward(ref, x, g, b, norm)
    ent = entropy(out)
    reliable = ent < e0
    grads = torch.autograd.grad(ent[reliable].mean(), [g, b])
    norm_g = torch.sqrt(sum((gr**2).sum() for gr in grads))
    eps = [rho * gr / (norm_g + 1e-12) for gr in grads]
    gp, bp = ((t.detach() + e).requires_grad_(True) for t, e in zip(params, eps))
    ent2 = entropy(ref_forward(ref, x, gp, bp, norm))[reliable]
    keep = ent2 < e0
    loss2 = ent2[keep].mean()
    grads2 = torch.autograd.grad(loss2, [gp, bp])
    new = [t - lr * gr for t, gr in zip(params, grads2)]  # SGD momentum 0.9, first step: buf = grad
    return out.detach(), reliable, keep, float(loss2.detach()), new


def test_paper_defaults():
    c = SARConfig()
    assert (c.rho, c.reset_constant, c.e_margin_scale, c.ema_momentum) == (0.05, 0.2, 0.4, 0.9)
    assert (c.optimizer, c.lr, c.momentum, c.steps) == ("sgd", 0.00025, 0.9, 1)
    assert create_method("sar", tiny()).e0(1000) == pytest.approx(0.4 * math.log(1000))


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_one_sam_step_matches_the_paper(norm):
    lr, rho = 0.2, 0.1
    e0 = 0.4 * math.log(3)
    model, ref = tiny(norm=norm), tiny(norm=norm)
    m = create_method("sar", model, lr=lr, rho=rho)
    assert sorted(m.adapted_parameter_names()) == ["model.norm.bias", "model.norm.weight"]
    conv_w = model.conv.weight.clone()
    x = batch(1)
    params = [ref.norm.weight.detach().clone(), ref.norm.bias.detach().clone()]
    out, reliable, keep, loss2, new = sar_reference(ref, x, params, lr, rho, e0, norm)
    assert 0 < int(reliable.sum()) < len(x)
    assert 0 < int(keep.sum()) < int(reliable.sum()), "the second filter (at w + eps) should drop some"

    logits = m(x)

    torch.testing.assert_close(logits, out, rtol=1e-5, atol=1e-5)  # first forward, before the update
    torch.testing.assert_close(model.norm.weight.detach(), new[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.norm.bias.detach(), new[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(model.conv.weight, conv_w)
    assert bool(m.has_ema) and float(m.ema) == pytest.approx(loss2, rel=1e-5)  # EMA starts at the first loss
    assert m.recoveries == 0


def test_recovery_restores_source_weights_and_keeps_the_ema():
    lr, rho, e0 = 0.2, 0.1, 0.4 * math.log(3)
    model, ref = tiny(), tiny()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    # e_m above any entropy: the first step's EMA is below it, so the model is recovered right after.
    m = create_method("sar", model, lr=lr, rho=rho, reset_constant=10.0)
    x = batch(1)
    params = [ref.norm.weight.detach().clone(), ref.norm.bias.detach().clone()]
    _, _, _, loss2, _ = sar_reference(ref, x, params, lr, rho, e0)
    m(x)
    assert m.recoveries == 1
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    assert float(m.ema) == pytest.approx(loss2, rel=1e-5)
    assert all(not s for s in m.optimizer.state.values())  # optimiser state (momentum) back to empty


def test_no_reliable_sample_means_no_update():
    model = tiny()
    w = model.norm.weight.clone()
    m = create_method("sar", model, e_margin=1e-6)
    m(batch(1))
    assert torch.equal(model.norm.weight, w) and not bool(m.has_ema) and m.nonfinite_steps == 0


def test_bad_inputs_fail_clearly():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ValueError, match="method 'sar' adapts the affine parameters of normalisation layers"):
        create_method("sar", plain)
    with pytest.raises(ValueError, match="sar: need rho > 0"):
        create_method("sar", tiny(), rho=0.0)
    with pytest.raises(ValueError, match="every normalisation layer is excluded"):
        create_method("sar", tiny(), exclude=("norm",))
    # batch size 1 is supported (the paper's wild setting), e.g. with group norm
    assert create_method("sar", tiny(norm="gn"))(batch(1, n=1)).shape == (1, 3)

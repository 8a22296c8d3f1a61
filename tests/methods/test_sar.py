"""SAR: the reliable-sample filter, the two-pass SAM update and model recovery checked against the
paper (Niu et al., ICLR 2023, Eq. 2-5, Section 4) computed by hand."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from testtime.methods import create_method
from testtime.methods.sar import SARConfig


@pytest.fixture
def tiny(make_tiny):
    """``tiny(seed=0, norm="bn")``: the conftest model (norm layer ``norm1``: BN, or GN with 2 groups) with
    norm weights in [0.5, 1.5], biases in [-0.2, 0.2] and the classifier x15."""
    return functools.partial(make_tiny, attr="norm1", weight=(0.5, 1.5), bias=(-0.2, 0.2), fc_scale=15.0)

def sar_reference(ref, x, params, lr, rho, e0, tiny_forward, entropy):
    """One SAR step from the paper: filter (Eq. 2), SAM perturbation (Eq. 4), re-filter, SGD at w (Eq. 5)."""
    g, b = (t.clone().requires_grad_(True) for t in params)
    out = tiny_forward(ref, x, g, b)
    ent = entropy(out)
    reliable = ent < e0
    grads = torch.autograd.grad(ent[reliable].mean(), [g, b])
    norm_g = torch.sqrt(sum((gr**2).sum() for gr in grads))
    eps = [rho * gr / (norm_g + 1e-12) for gr in grads]
    gp, bp = ((t.detach() + e).requires_grad_(True) for t, e in zip(params, eps))
    ent2 = entropy(tiny_forward(ref, x, gp, bp))[reliable]
    keep = ent2 < e0
    loss2 = ent2[keep].mean()
    grads2 = torch.autograd.grad(loss2, [gp, bp])
    new = [t - lr * gr for t, gr in zip(params, grads2)]  # SGD momentum 0.9, first step: buf = grad
    return out.detach(), reliable, keep, float(loss2.detach()), new


def test_paper_defaults(tiny):
    c = SARConfig()
    assert (c.rho, c.reset_constant, c.e_margin_scale, c.ema_momentum) == (0.05, 0.2, 0.4, 0.9)
    assert (c.optimizer, c.lr, c.momentum, c.steps) == ("sgd", 0.00025, 0.9, 1)
    assert create_method("sar", tiny()).e0(1000) == pytest.approx(0.4 * math.log(1000))


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_one_sam_step_matches_the_paper(norm, tiny, colour_batch, tiny_forward, entropy):
    lr, rho = 0.2, 0.1
    e0 = 0.4 * math.log(3)
    model, ref = tiny(norm=norm), tiny(norm=norm)
    m = create_method("sar", model, lr=lr, rho=rho)
    assert sorted(m.adapted_parameter_names()) == ["model.norm1.bias", "model.norm1.weight"]
    conv_w = model.conv.weight.clone()
    x = colour_batch(1)
    params = [ref.norm1.weight.detach().clone(), ref.norm1.bias.detach().clone()]
    out, reliable, keep, loss2, new = sar_reference(ref, x, params, lr, rho, e0, tiny_forward, entropy)
    assert 0 < int(reliable.sum()) < len(x)
    assert 0 < int(keep.sum()) < int(reliable.sum()), "the second filter (at w + eps) should drop some"

    logits = m(x)

    torch.testing.assert_close(logits, out, rtol=1e-5, atol=1e-5)  # first forward, before the update
    torch.testing.assert_close(model.norm1.weight.detach(), new[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.norm1.bias.detach(), new[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(model.conv.weight, conv_w)
    assert bool(m.has_ema) and float(m.ema) == pytest.approx(loss2, rel=1e-5)  # EMA starts at the first loss
    assert m.recoveries == 0


def test_recovery_restores_source_weights_and_keeps_the_ema(tiny, colour_batch, tiny_forward, entropy):
    lr, rho, e0 = 0.2, 0.1, 0.4 * math.log(3)
    model, ref = tiny(), tiny()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    # e_m above any entropy: the first step's EMA is below it, so the model is recovered right after.
    m = create_method("sar", model, lr=lr, rho=rho, reset_constant=10.0)
    x = colour_batch(1)
    params = [ref.norm1.weight.detach().clone(), ref.norm1.bias.detach().clone()]
    _, _, _, loss2, _ = sar_reference(ref, x, params, lr, rho, e0, tiny_forward, entropy)
    m(x)
    assert m.recoveries == 1
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    assert float(m.ema) == pytest.approx(loss2, rel=1e-5)
    assert all(not s for s in m.optimizer.state.values())  # optimiser state (momentum) back to empty


def test_no_reliable_sample_on_the_first_batch_leaves_the_weights(tiny, colour_batch):
    model = tiny()
    w = model.norm1.weight.clone()
    m = create_method("sar", model, e_margin=1e-6)
    m(colour_batch(1))  # a zero-gradient step with an empty momentum buffer moves nothing
    assert torch.equal(model.norm1.weight, w) and not bool(m.has_ema) and m.nonfinite_steps == 0


def _empty_filter(monkeypatch, m, stage: int) -> None:
    """From now on, make filter ``stage`` (1: first pass at w, 2: second pass at w + eps) keep nothing."""
    import testtime.methods.sar as sar_mod

    if stage == 1:
        monkeypatch.setattr(m, "e0", lambda num_classes: 1e-6)
        return
    calls = []
    real = sar_mod.softmax_entropy

    def entropy_then_too_high(logits):
        calls.append(1)
        ent = real(logits)
        return ent + 100.0 if len(calls) % 2 == 0 else ent  # every second call is the pass at w + eps

    monkeypatch.setattr(sar_mod, "softmax_entropy", entropy_then_too_high)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("step_on_empty", [True, False])
def test_empty_filter_still_steps_with_momentum_as_the_official_code(stage, step_on_empty, tiny, colour_batch,
                                                                     monkeypatch):
    """mr-eggplant/SAR back-propagates the mean of an empty selection (zero gradient) and still calls
    ``second_step``: SGD with momentum 0.9 then moves w by ``-lr * 0.9 * buffer`` (``buffer <- 0.9 buffer + 0``)."""
    lr = 0.2
    model = tiny()
    m = create_method("sar", model, lr=lr, step_on_empty=step_on_empty)
    m(colour_batch(1))  # a real step: the momentum buffer is the gradient at w + eps
    params = [model.norm1.weight, model.norm1.bias]
    bufs = [m.optimizer.state[p]["momentum_buffer"].clone() for p in params]
    assert all(b.abs().max() > 0 for b in bufs)
    before = [p.detach().clone() for p in params]
    ema = float(m.ema)
    _empty_filter(monkeypatch, m, stage)
    m(colour_batch(2))
    for p, w, b in zip(params, before, bufs):
        expected = w - lr * 0.9 * b if step_on_empty else w
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
    assert float(m.ema) == ema and m.nonfinite_steps == 0  # the loss average is not moved by an empty batch


def test_bad_inputs_fail_clearly(tiny, colour_batch):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ValueError, match="method 'sar' adapts the affine parameters of normalisation layers"):
        create_method("sar", plain)
    with pytest.raises(ValueError, match="sar: need rho > 0"):
        create_method("sar", tiny(), rho=0.0)
    with pytest.raises(ValueError, match="every normalisation layer is excluded"):
        create_method("sar", tiny(), exclude=("norm1",))
    # batch size 1 is supported (the paper's wild setting), e.g. with group norm
    assert create_method("sar", tiny(norm="gn"))(colour_batch(1, n=1)).shape == (1, 3)


class _ViTLike(nn.Module):
    """The module names of a timm ViT-B/16 that matter to SAR: 12 blocks with norm1/norm2, a final
    ``norm``, a ``fc_norm`` and a head; (B, 3, 8, 8) -> (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.blocks = nn.ModuleList(nn.Module() for _ in range(12))
        for blk in self.blocks:
            blk.norm1, blk.mlp, blk.norm2 = nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8)
        self.norm = nn.LayerNorm(8)
        self.fc_norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 4, 8)
        for blk in self.blocks:
            t = t + blk.mlp(blk.norm2(blk.norm1(t)))
        return self.head(self.fc_norm(self.norm(t).mean(1)))


def _official_collect_params(model):
    """mr-eggplant/SAR ``collect_params``'s rules, written out: skip names containing layer4, blocks.9,
    blocks.10, blocks.11 or 'norm.', and the name 'norm'; keep BN2d/LN/GN weight and bias."""
    names = []
    for nm, m in model.named_modules():
        if any(s in nm for s in ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")) or nm == "norm":
            continue
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            names += [f"model.{nm}.{p}" for p in ("weight", "bias")]
    return sorted(names)


def test_vit_style_exclusions_are_the_official_ones():
    torch.manual_seed(0)
    model = _ViTLike()
    m = create_method("sar", model)
    names = sorted(m.adapted_parameter_names())
    assert names == _official_collect_params(model)
    assert "model.blocks.8.norm2.weight" in names and "model.fc_norm.weight" in names
    assert not any(n.startswith(("model.blocks.9.", "model.blocks.11.", "model.norm.")) for n in names)
    wrapped = nn.Sequential()
    wrapped.vit = _ViTLike()  # the same layers stay frozen inside a wrapper ("vit.norm", "vit.blocks.9")
    inner = sorted(n.replace("model.vit.", "model.") for n in create_method("sar", wrapped).adapted_parameter_names())
    assert inner == names

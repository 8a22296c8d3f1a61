"""TTTLinear / TTTMLP modules: the three forms agree, decoding with a cache, the published design, bad input."""

from __future__ import annotations

import pytest
import torch

from testtime.layers import TTTMLP, TTTCache, TTTConfig, TTTLinear

TOL = 1e-10


def _layer(cls, **kw):
    torch.manual_seed(0)
    layer = cls(TTTConfig(width=16, num_heads=2, mini_batch_size=4, **kw)).double()
    with torch.no_grad():  # move the inner weights away from their small initial values
        for p in layer.inner:
            p.add_(0.3 * torch.randn_like(p))
        if hasattr(layer, "token_idx_offset"):
            layer.token_idx_offset.add_(0.1 * torch.randn_like(layer.token_idx_offset))
    return layer


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
@pytest.mark.parametrize("position_scale", ["none", "fixed", "learnable"])
def test_forms_agree_on_outputs_and_parameter_gradients(cls, position_scale):
    layer = _layer(cls, position_scale=position_scale)
    x = torch.randn(2, 11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # 11 = 2 * 4 + 3
    outs, grads = {}, {}
    for form in ("sequential", "primal", "dual"):
        layer.zero_grad()
        y = layer(x, form=form)
        y.square().sum().backward()
        outs[form] = y.detach()
        grads[form] = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for form in ("primal", "dual"):
        assert (outs[form] - outs["sequential"]).abs().max() <= TOL
        for name, g in grads[form].items():
            assert (g - grads["sequential"][name]).abs().max() <= TOL, name
    # outer gradients reach the inner initial weights and the learning-rate gate through the inner updates
    assert all(grads["dual"][f"inner.{i}"].abs().max() > 0 for i in range(len(layer.inner)))
    assert grads["dual"]["lr_weight"].abs().max() > 0


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
@pytest.mark.parametrize("form", ["sequential", "primal", "dual", None])
def test_decoding_in_pieces_equals_one_call(cls, form):
    layer = _layer(cls, position_scale="learnable")
    x = torch.randn(2, 14, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = layer(x, form="dual")
        cache, pieces = TTTCache(), []
        for a, b in ((0, 1), (1, 2), (2, 7), (7, 8), (8, 13), (13, 14)):  # single tokens and partial mini-batches
            pieces.append(layer(x[:, a:b], cache=cache, form=form))
    assert cache.seen == 14 and cache.state.offset == 14 % 4
    assert (torch.cat(pieces, 1) - full).abs().max() <= TOL


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
def test_causal(cls):
    layer = _layer(cls)
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] += 1.0  # position 5 is inside the second mini-batch
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    assert (y[:, :6] - y2[:, :6]).abs().max() <= 1e-13
    assert (y[:, 6:] - y2[:, 6:]).abs().max() > 1e-3


def test_published_design_shapes_and_learning_rate():
    lin, mlp = TTTLinear(TTTConfig(width=32, num_heads=4)), TTTMLP(TTTConfig(width=32, num_heads=4))
    assert [tuple(p.shape) for p in lin.inner] == [(4, 8, 8), (4, 1, 8)]
    assert [tuple(p.shape) for p in mlp.inner] == [(4, 8, 32), (4, 1, 32), (4, 32, 8), (4, 1, 8)]
    assert lin.base_lr == 1.0 and mlp.base_lr == 0.1 and lin.config.mini_batch_size == 16
    x = torch.randn(2, 5, 32)
    expected = torch.stack([0.1 * torch.sigmoid(x @ mlp.lr_weight[h] + mlp.lr_bias[h]) / 8 for h in range(4)], 1)
    torch.testing.assert_close(mlp.inner_lr(x), expected)
    torch.testing.assert_close(TTTLinear(TTTConfig(32, 4, mini_batch_size=3, position_scale="fixed"))
                               .position_scale(), torch.tensor([1.0, 1 / 2, 1 / 3]))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="^num_heads: must divide width 30"):
        TTTConfig(width=30, num_heads=4)
    with pytest.raises(ValueError, match="^mini_batch_size"):
        TTTConfig(width=32, num_heads=4, mini_batch_size=0)
    with pytest.raises(ValueError, match="^position_scale"):
        TTTConfig(width=32, num_heads=4, position_scale="token_idx")
    layer = TTTLinear(TTTConfig(width=8, num_heads=2, mini_batch_size=4))
    x = torch.randn(1, 6, 8)
    x[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="^x: contains NaN"):
        layer(x)
    with pytest.raises(ValueError, match=r"^x: expected a tensor \(B, L, 8\)"):
        layer(torch.randn(1, 6, 9))
    with pytest.raises(ValueError, match="^form"):
        layer(torch.randn(1, 6, 8), form="fast")
    cache = TTTCache()
    layer(torch.randn(2, 3, 8), cache=cache)
    with pytest.raises(ValueError, match="^cache: holds a batch of 2"):
        layer(torch.randn(1, 1, 8), cache=cache)

"""LAME: the Laplacian-regularised assignments checked against the paper's fixed point computed by hand
(Boudiaf et al., CVPR 2022): z_i proportional to p_i exp(sum_j w_ij z_j), kNN affinity (k = 5) on the
L2-normalised features of the frozen model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.lame import LAMEConfig
from testtime.models import create_model


def eval_features(m, x):
    """TinyNet in eval mode, written out: features (B, W) with the stored BN statistics, and logits."""
    bn = m.bn
    h = F.conv2d(x, m.conv.weight, padding=1)
    h = (h - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    h = h * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    z = h.clamp_min(0).mean(dim=(2, 3))
    return z, z @ m.fc.weight.T + m.fc.bias


def reference(m, x, k=5, iters=200):
    with torch.no_grad():
        feats, logits = eval_features(m, x)
    p = logits.softmax(1)
    z = feats / feats.norm(dim=1, keepdim=True)
    n = len(x)
    w = torch.zeros(n, n)
    for i in range(n):  # the k nearest other points, by Euclidean distance
        d = [(float((z[i] - z[j]).norm()), j) for j in range(n) if j != i]
        for _, j in sorted(d)[:k]:
            w[i, j] = 1.0
    y = p.clone()
    for _ in range(iters):  # z_i <- p_i exp(sum_j w_ij z_j) / normaliser
        y = p * torch.exp(w @ y)
        y = y / y.sum(1, keepdim=True)
    return p, w, y


def test_defaults():
    c = LAMEConfig()
    assert (c.affinity, c.knn, c.bound_lambda, c.max_steps, c.steps, c.force_symmetry) == ("knn", 5, 1.0, 100, 0, False)


def test_assignments_match_the_fixed_point_computed_by_hand(make_tiny, colour_batch):
    model = make_tiny(weight=(0.5, 1.5), bias=(-0.2, 0.2), running_mean=(-0.1, 0.1), running_var=(0.5, 1.5),
                      fc_scale=4.0)
    x = colour_batch(1, n=12)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    m = create_method("lame", model)
    assert m.adapted_parameter_names() == [] and m.optimizer is None
    out = m(x)
    p, w, y = reference(model, x)
    torch.testing.assert_close(out.softmax(1), y, rtol=1e-4, atol=1e-5)
    assert (w.sum(1) == 5).all()
    # The fixed point holds for LAME's output, and the adjustment changed some predictions' probabilities.
    yl = out.softmax(1)
    fixed = p * torch.exp(w @ yl)
    torch.testing.assert_close(yl, fixed / fixed.sum(1, keepdim=True), rtol=1e-4, atol=1e-5)
    assert (yl - p).abs().max() > 1e-2
    # Frozen model: nothing in it changed (weights and BN statistics), and it stayed in eval mode.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_batch_of_one_returns_the_model_prediction(make_tiny):
    model = make_tiny(fc_scale=4.0)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = create_method("lame", model)(x)
    with torch.no_grad():
        expected = eval_features(model, x)[1].softmax(1)
    torch.testing.assert_close(out.softmax(1), expected, rtol=1e-5, atol=1e-6)


def test_works_without_batchnorm_and_bad_config_fails_clearly():
    m = create_method("lame", create_model("resnet8", 4, norm="group"))
    assert m(torch.rand(6, 3, 32, 32)).shape == (6, 4)
    with pytest.raises(ValueError, match="lame: affinity must be one of knn, rbf, linear"):
        create_method("lame", create_model("resnet8", 4), affinity="cosine")
    with pytest.raises(ValueError, match="lame: need knn >= 1"):
        create_method("lame", create_model("resnet8", 4), knn=0)

"""T3A: supports, entropy filter and prototype logits checked against the paper's classifier adjustment
written by hand (Iwasawa and Matsuo, NeurIPS 2021): supports start at the classifier weights, each test
feature joins its pseudo-label's set, M lowest-entropy supports per class are kept, and
logits = z . c_k / ||c_k|| with c_k the sum of the normalised supports of class k."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.t3a import T3AConfig
from testtime.models import create_model


def features(m, x):
    """TinyNet's features in eval mode (stored BN statistics), written out."""
    bn = m.bn
    h = F.conv2d(x, m.conv.weight, padding=1)
    h = (h - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    return (h * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)).clamp_min(0).mean(dim=(2, 3))


def ent(logits):
    p = logits.softmax(1)
    return -(p * p.log()).sum(1)


def reference(m, xs, M):
    """Per batch: (logits, {class: sorted list of kept support rows as tuples})."""
    W, b = m.fc.weight.detach(), m.fc.bias.detach()
    sup = [(w, int((w @ W.T + b).argmax()), float(ent((w @ W.T + b)[None])[0])) for w in W]
    out = []
    for x in xs:
        with torch.no_grad():
            z = features(m, x)
        logits = z @ W.T + b
        sup = sup + [(zi, int(li.argmax()), float(ent(li[None])[0])) for zi, li in zip(z, logits)]
        kept = []
        for k in range(W.shape[0]):  # the entropy filter: M most confident supports of each class
            kept += sorted([s for s in sup if s[1] == k], key=lambda s: s[2])[:M]
        sup = kept
        protos = torch.stack([sum((s[0] / s[0].norm() for s in sup if s[1] == k), torch.zeros(W.shape[1]))
                              for k in range(W.shape[0])])  # (K, D)
        norms = protos.norm(dim=1).clamp_min(1e-12)
        out.append((z @ (protos / norms[:, None]).T, sup))
    return out


def test_defaults():
    assert (T3AConfig().filter_k, T3AConfig().steps) == (100, 1)


def test_two_batches_match_the_paper_computed_by_hand(make_tiny, colour_batch):
    model = make_tiny(weight=(0.5, 1.5), bias=(-0.2, 0.2), running_mean=(-0.1, 0.1), fc_scale=4.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xs = [colour_batch(1, n=10), colour_batch(2, n=10)]
    M = 3
    ref = reference(model, xs, M)
    m = create_method("t3a", model, filter_k=M)
    assert m.support.z.shape == (3, 4)  # starts with the 3 classifier weight vectors
    for x, (logits, sup) in zip(xs, ref):
        out = m(x)
        torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-6)
        assert m.last_selected == len(sup) and len(sup) < 3 + 10  # the filter dropped some supports
        got = sorted((tuple(r.tolist()), int(c)) for r, c in zip(m.support.z, m.support.labels))
        want = sorted((tuple(s[0].tolist()), s[1]) for s in sup)
        assert len(got) == len(want)
        for (gz, gc), (wz, wc) in zip(got, want):
            assert gc == wc and torch.allclose(torch.tensor(gz), torch.tensor(wz), atol=1e-6)
    # The model itself is untouched; predict() classifies without adding to the supports.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    n = len(m.support.z)
    torch.testing.assert_close(m.predict(xs[1]), ref[1][0], rtol=1e-5, atol=1e-6)
    assert len(m.support.z) == n


def test_reset_restores_the_initial_supports(make_tiny, colour_batch):
    m = create_method("t3a", make_tiny(fc_scale=4.0))
    z0 = m.support.z.clone()
    m(colour_batch(1))
    assert len(m.support.z) > len(z0)
    m.reset()
    assert torch.equal(m.support.z, z0)


def test_bad_config_fails_clearly():
    with pytest.raises(ValueError, match="t3a: need filter_k >= 1"):
        create_method("t3a", create_model("resnet8", 4), filter_k=-1)
    with pytest.raises(ValueError, match="steps 0 or 1"):
        create_method("t3a", create_model("resnet8", 4), steps=3)

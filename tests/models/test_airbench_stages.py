"""The stage interface (``stage_dims``, ``stage_outputs``, ``pool_features``, ``stem_modules``) of the airbench and
ResNet encoders, and the intermediate-layer peers (clust3, nc-ttt, rec-ttt) on an airbench backbone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.clust3 import ClusT3
from testtime.methods.nc_ttt import NCTTT
from testtime.methods.rec_ttt import ReCTTT
from testtime.models import CIFAR10_MEAN, CIFAR10_STD, create_model


def _images(n, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _base(arch="airbench-small", seed=0):
    torch.manual_seed(seed)
    return create_model(arch, 10).eval()


def _airbench_plain(enc, x):
    """The airbench forward written out: normalise, GELU(stem), each group, max over positions / 9."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    h = F.gelu(enc.stem((x - mean) / std))
    maps = []
    for g in enc.layers:
        h = F.gelu(g.bn1(F.max_pool2d(g.conv1(h), 2)))
        h = F.gelu(g.bn2(g.conv2(h)))
        maps.append(h)
    return maps, h.amax(dim=(2, 3)) / 9


@torch.no_grad()
def test_airbench_stage_outputs_and_pooling_match_the_forward():
    enc = _base().encoder
    x = _images(3)
    maps = enc.stage_outputs(x)
    ref_maps, ref_feats = _airbench_plain(enc, x)
    assert [tuple(m.shape) for m in maps] == [(3, 32, 15, 15), (3, 64, 7, 7), (3, 64, 3, 3)]
    for m, r in zip(maps, ref_maps):
        torch.testing.assert_close(m, r, rtol=1e-4, atol=1e-5)
    assert torch.equal(enc.pool_features(maps[-1]), enc(x))  # the forward's own path, bit for bit
    torch.testing.assert_close(enc(x), ref_feats, rtol=1e-4, atol=1e-5)
    assert enc.stage_dims == tuple(m.shape[1] for m in maps) == (32, 64, 64)
    assert [torch.equal(a, b) for a, b in zip(enc.stage_outputs(x, 2), maps)] == [True, True]
    assert len(enc.stage_outputs(x, 2)) == 2
    assert enc.stem_modules() == (enc.stem,)
    assert create_model("airbench", 10).encoder.stage_dims == (64, 256, 256)


@torch.no_grad()
def test_resnet_stage_interface():
    enc = _base("resnet8").encoder
    x = _images(3)
    maps = enc.stage_outputs(x)
    assert torch.equal(enc.pool_features(maps[-1]), enc(x))
    torch.testing.assert_close(enc(x), maps[-1].mean(dim=(2, 3)))
    assert enc.stage_dims == tuple(m.shape[1] for m in maps) == (16, 32, 64)
    assert enc.stem_modules() == (enc.conv1, enc.bn1)


def _changed(before, after):
    b = dict(before.named_parameters())
    return {n for n, p in after.named_parameters() if not torch.equal(p, b[n])}


@pytest.mark.parametrize(
    ("cls", "extract_layer", "groups"),
    [(ClusT3, None, 3), (ClusT3, 2, 2), (NCTTT, None, 1)],  # defaults: clust3 3 (all groups), nc-ttt 1
)
def test_layer_head_methods_on_airbench(cls, extract_layer, groups):
    base = _base()
    x = _images(4)
    with torch.no_grad():
        ref_logits = base(x)
    model = cls.source_model(base, cls.example_head_config()).eval()
    with torch.no_grad():
        assert torch.equal(model(x), ref_logits)
        assert torch.equal(model.logits_from(model.stage_outputs(x)), ref_logits)
    before = copy.deepcopy(model)
    kw = {} if extract_layer is None else {"extract_layer": extract_layer}
    m = create_method(cls.name, model, steps=1, lr=1e-3, **kw)
    assert m.config.extract_layer == (extract_layer or groups)
    out = m(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    declared = ("encoder.stem.", *(f"encoder.layers.{i}." for i in range(groups)))
    names = {n for n, _ in model.named_parameters() if n.startswith(declared)}
    assert set(m.adapted_parameter_names()) == {f"model.{n}" for n in names}
    changed = _changed(before, m.model)
    assert changed <= names
    assert {"encoder.stem.weight", "encoder.layers.0.conv1.weight"} <= changed  # the heads read group 1 or 2


def test_rec_ttt_on_airbench():
    base = _base()
    x = _images(4)
    with torch.no_grad():
        ref, ref_flip = base(x), base(x.flip(-1))
    model = ReCTTT.source_model(base).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref + ref_flip, rtol=0, atol=0)  # fc(e1(x)) + fc2(e2(flip x))
        _, l1, l2 = model.reconstruction(x)
        assert torch.equal(l1, ref) and torch.equal(l2, ref_flip)
    before = copy.deepcopy(model)
    m = create_method("rec-ttt", model, steps=1)
    out = m(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    declared = ("encoder.", "encoder2.", "fc.", "fc2.")
    names = {n for n, _ in model.named_parameters() if n.startswith(declared)}
    assert set(m.adapted_parameter_names()) == {f"model.{n}" for n in names}
    changed = _changed(before, m.model)
    assert changed <= names
    assert {"encoder.stem.weight", "encoder2.stem.weight", "encoder.layers.2.conv2.weight"} <= changed


def test_source_model_rejects_an_encoder_without_stages():
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ValueError, match="needs an encoder with stage_outputs"):
        ClusT3.source_model(plain)
    with pytest.raises(ValueError, match="needs an encoder with stage_outputs"):
        ReCTTT.source_model(plain)

"""The deployment wrapper and the CTA bundle file (g, pi, h only; f is never loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testtime.api import Adapter, load_bundle
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector
from testtime.train import load_checkpoint, save_modules


def _save_bundle(tmp_path, arch="resnet8"):
    torch.manual_seed(0)
    m = create_model(arch, 4)
    b = ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)
    meta = {"arch": arch, "num_classes": 4, "in_chans": 3, "feature_dim": m.feature_dim, "through_projector": True}
    save_modules(tmp_path / "cta", {"encoder": b.encoder, "projector": b.projector, "head": b.head}, meta)
    return b


def test_bundle_round_trip_holds_no_supervised_encoder(tmp_path):
    b = _save_bundle(tmp_path)
    tensors, _ = load_checkpoint(tmp_path / "cta")
    assert {k.split(".")[1] for k in tensors} == {"encoder", "projector", "head"}
    loaded = load_bundle(tmp_path / "cta")
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), b.eval()(x))


def test_adapter_predicts_while_adapting_and_resets(tmp_path):
    _save_bundle(tmp_path)
    ad = Adapter(load_bundle(tmp_path / "cta"), "cta", episodic=False, steps=2, lr=1e-3)
    start = {k: v.clone() for k, v in ad.method.state_dict().items()}
    imgs = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    pred = ad(imgs)
    assert pred.shape == (6,) and pred.dtype == torch.int64
    assert any(not torch.equal(v, ad.method.state_dict()[k]) for k, v in start.items())
    ad.reset()
    assert all(torch.equal(v, ad.method.state_dict()[k]) for k, v in start.items())
    episodic = Adapter(load_bundle(tmp_path / "cta"), "cta", steps=1, lr=1e-3)
    assert torch.equal(episodic(imgs), episodic(imgs))  # every call starts from the aligned weights
    with pytest.raises(ValueError, match="uint8"):
        ad(imgs.astype(np.float32))


def test_bundle_of_another_architecture_fails_clearly(tmp_path):
    _save_bundle(tmp_path)
    import json

    side = json.loads((tmp_path / "cta.json").read_text())
    side["meta"]["arch"] = "resnet20"
    (tmp_path / "cta.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match="another architecture"):
        load_bundle(tmp_path / "cta")

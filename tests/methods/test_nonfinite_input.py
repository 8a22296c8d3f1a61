"""Non-finite and out-of-range inputs fail in one line (issue 9): BN would spread one NaN over the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testtime.api import Adapter
from testtime.methods import create_method
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector


def _bundle(in_chans: int = 3) -> ProjectedClassifier:
    torch.manual_seed(0)
    m = create_model("resnet8", 4, in_chans=in_chans)
    return ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)


def _batch(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["bn", "tent", "cta", "source"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_nonfinite_pixel_is_refused(name, bad):
    model = _bundle() if name == "cta" else create_model("resnet8", 4)
    method = create_method(name, model, **({"steps": 1} if name != "source" else {}))
    x = _batch()
    x[2, 1, 3, 4] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf values in 1 of 6 images"):
        method.step(x)


def test_adapter_can_drop_and_report_nonfinite_images():
    x = _batch()
    x[2, 0, 0, 0] = float("nan")
    ad = Adapter(_bundle(), "bn", on_nonfinite="drop")
    pred = ad(x)
    assert pred[2] == -1 and ad.last_dropped == [2] and ad.dropped_images == 1
    keep = torch.tensor([0, 1, 3, 4, 5])
    expected = Adapter(_bundle(), "bn")(x[keep])  # the same batch without the bad image
    assert torch.equal(pred[keep], expected)
    with pytest.raises(ValueError, match="NaN or Inf"):
        Adapter(_bundle(), "bn")(x)


def test_adapter_refuses_out_of_range_floats_wrong_channels_and_bad_settings():
    ad = Adapter(_bundle(), "cta", steps=1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        ad(_batch() * 1000)
    with pytest.raises(ValueError, match="3 channels .* the model takes 1"):
        Adapter(_bundle(in_chans=1), "cta", steps=1)(_batch())
    with pytest.raises(ValueError, match="3 channels .* the model takes 1"):
        Adapter(_bundle(in_chans=1), "cta", steps=1)(np.zeros((4, 16, 16, 3), np.uint8))
    for kw, match in [({"steps": -1}, "cta.steps must be >= 1"), ({"steps": 0}, "cta.steps must be >= 1"),
                      ({"lr": 0}, "cta.lr must be > 0"), ({"lr": "abc"}, "cta.lr: expected a number"),
                      ({"tau": -1}, "cta.tau must be > 0"), ({"bogus": 1}, "unknown key")]:
        with pytest.raises(ValueError, match=match):
            Adapter(_bundle(), "cta", **kw)
    with pytest.raises(ValueError, match="device"):
        Adapter(_bundle(), "cta", device="nosuch")


def test_adapter_accepts_float64_tensors():
    x = _batch()
    a = Adapter(_bundle(), "cta", steps=1, lr=1e-3)(x.double())
    b = Adapter(_bundle(), "cta", steps=1, lr=1e-3)(x)
    assert torch.equal(a, b)

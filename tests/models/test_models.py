import copy

import pytest
import torch
from torch import nn

from testtime.models import create_model, list_models, split_classifier

DIMS = {"resnet8": 64, "resnet20": 64, "resnet26": 64, "resnet18": 512, "resnet50": 2048, "airbench": 256,
        "airbench-small": 64}


@pytest.mark.parametrize("name", list_models())
def test_shapes_and_split(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    f, h = split_classifier(model)
    feats = f(x)
    assert feats.shape == (2, DIMS[name])
    torch.testing.assert_close(h(feats), model(x))


def test_grey_input_and_group_norm():
    model = create_model("resnet8", num_classes=10, in_chans=1, norm="group")
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        self.classifier = nn.Linear(5, 3)

    def forward(self, x):
        return self.classifier(self.body(x))


def test_split_foreign_model_leaves_it_intact():
    m = Plain()
    f, h = split_classifier(m)
    x = torch.rand(4, 3, 2, 2)
    assert f(x).shape == (4, 5)
    assert isinstance(m.classifier, nn.Linear)  # untouched after the call
    torch.testing.assert_close(h(f(x)), m(x))
    f2 = copy.deepcopy(f)
    torch.testing.assert_close(f2(x), f(x))


def test_unsplittable_model_says_how():
    with pytest.raises(ValueError, match="split_fn"):
        split_classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="head_attr"):
        split_classifier(Plain(), head_attr="nope")


@pytest.mark.parametrize("kw,match", [
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 10, "in_chans": 2}, "in_chans"),
    ({"num_classes": 10, "norm": "layer"}, "norm"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        create_model("resnet8", **kw)
    with pytest.raises(KeyError, match="valid: airbench, .*resnet18"):
        create_model("resnet7", num_classes=10)


def test_airbench_grey_input():
    model = create_model("airbench-small", num_classes=10, in_chans=1)
    assert model.encoder.stem.out_channels == 8  # 2 x the 2x2 patch size of a grey image
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_airbench_whitening_decorrelates_patches():
    """After init_whitening the stem's first half maps normalised 2x2 patches to unit-variance,
    uncorrelated outputs (covariance ~ lambda / (lambda + eps) on the diagonal, 0 off it)."""
    torch.manual_seed(0)
    model = create_model("airbench-small", num_classes=10)
    base = torch.rand(64, 1, 16, 16)
    images = (0.6 * base + 0.4 * torch.rand(64, 3, 16, 16)).clamp(0, 1)  # correlated channels
    enc = model.encoder
    enc.init_whitening(images, eps=1e-6)
    w, b = enc.stem.weight, enc.stem.bias
    torch.testing.assert_close(w[:12], -w[12:])
    assert float(b.detach().abs().max()) == 0.0
    with torch.no_grad():
        out = torch.nn.functional.conv2d(enc.normalize(images), w[:12])  # (N, 12, 15, 15)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = torch.cov(flat.T)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)


def test_airbench_whitening_rejects_bad_images():
    model = create_model("airbench-small", num_classes=10)
    with pytest.raises(ValueError, match="images"):
        model.encoder.init_whitening(torch.zeros(4, 1, 8, 8))

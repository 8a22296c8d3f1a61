"""``model.conv_init``: airbench94's identity (Dirac) initialisation of the 3x3 convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from testtime.config import config_from_dict, identity_dict
from testtime.config.pipeline import ModelConfig, PipelineConfig
from testtime.data.split import ImageSplit
from testtime.models import create_model
from testtime.models.init import dirac_init_, init_convs_
from testtime.train.pipeline import new_classifier


def test_dirac_makes_each_conv_pass_its_first_channels():
    torch.manual_seed(0)
    enc = create_model("airbench-small", 10).encoder
    stem = enc.stem.weight.clone()
    assert dirac_init_(enc) == 6  # two 3x3 convolutions per group, three groups
    assert torch.equal(enc.stem.weight, stem)  # the 2x2 stem is left alone
    conv = enc.layers[1].conv2  # 64 -> 64
    x = torch.randn(2, conv.in_channels, 5, 5)
    torch.testing.assert_close(conv(x), x)
    widening = enc.layers[0].conv1  # 24 -> 32: the first 24 filters pass their input, the others keep theirs
    y = widening(torch.randn(2, widening.in_channels, 5, 5))
    assert y.shape[1] == 32
    x = torch.randn(1, widening.in_channels, 5, 5)
    torch.testing.assert_close(widening(x)[:, : widening.in_channels], x)
    assert widening.weight[widening.in_channels:].abs().sum() > 0


def test_init_convs_checks_its_argument():
    with pytest.raises(ValueError, match="conv_init: unknown 'xavier'; valid: default, dirac"):
        init_convs_(nn.Conv2d(3, 3, 3), "xavier")
    with pytest.raises(ValueError, match="no convolution with an odd square kernel"):
        init_convs_(nn.Linear(3, 3), "dirac")
    lin = nn.Linear(3, 3)
    w = lin.weight.clone()
    init_convs_(lin, "default")
    assert torch.equal(lin.weight, w)
    with pytest.raises(ValueError, match="model.conv_init: unknown name"):
        ModelConfig(conv_init="xavier")


def test_pipeline_model_uses_conv_init():
    rng = np.random.default_rng(0)
    data = ImageSplit(rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8), np.arange(64) % 4,
                      ("a", "b", "c", "d"), "toy")
    cfgs = [config_from_dict(PipelineConfig, {"name": "t", "model": {"arch": "airbench-small", "conv_init": k}})
            for k in ("default", "dirac")]
    plain, dirac = (new_classifier(c, data) for c in cfgs)
    a, b = plain.state_dict(), dirac.state_dict()
    same = {k for k in a if torch.equal(a[k], b[k])}
    assert "encoder.stem.weight" in same and "fc.weight" in same  # whitening and the other draws unchanged
    assert "encoder.layers.0.conv1.weight" not in same
    assert "conv_init" not in identity_dict(cfgs[0].model) and identity_dict(cfgs[1].model)["conv_init"] == "dirac"

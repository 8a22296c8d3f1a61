import pytest
import torch
from torch import nn

from testtime.methods import create_method
from testtime.methods.base import Method, MethodConfig, Requirements
from testtime.models import create_model


def test_unknown_method_and_config_field():
    model = create_model("resnet8", 4)
    with pytest.raises(KeyError, match="unknown method 'tentt'; valid: "):
        create_method("tentt", model)
    with pytest.raises(ValueError, match=r"bn: unknown config field\(s\) \['lrr'\]"):
        create_method("bn", model, lrr=1)


def test_bn_method_needs_bn():
    model = create_model("resnet8", 4, norm="group")
    with pytest.raises(ValueError, match="method 'bn' adapts BatchNorm layers but the model has none"):
        create_method("bn", model)


class _Exploding(Method):
    name = "exploding"
    requirements = Requirements(adapts="all")

    def configure(self):
        self.model.train().requires_grad_(True)

    def loss(self, x):
        logits = self.model(x)
        return logits.sum() * float("nan"), logits


def test_nonfinite_loss_is_skipped_and_counted():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    m = _Exploding(model, MethodConfig(steps=3))
    w = model[1].weight.detach().clone()
    m(torch.rand(2, 3, 2, 2))
    assert m.nonfinite_steps == 3
    assert torch.equal(model[1].weight, w)


def test_order_before_and_after_differ_for_an_updating_method():
    class _Grad(_Exploding):
        def loss(self, x):
            logits = self.model(x)
            return logits.logsumexp(1).mean(), logits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    m = _Grad(model, MethodConfig(steps=1, lr=0.5))
    x = torch.rand(2, 3, 2, 2)
    before = m.step(x, "before")
    m.reset()
    after = m.step(x, "after")
    m.reset()
    torch.testing.assert_close(before, m.predict(x))  # "before" = the pre-update weights' prediction
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="order must be"):
        m.step(x, "during")

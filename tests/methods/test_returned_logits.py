"""Which logits a method returns with order "before" and ``steps > 1`` (``Method.before_logits``).

The official loops of TENT, EATA, SAR and CoTTA are ``for _ in range(steps): outputs =
forward_and_adapt(x)``: they return the forward pass of the last step, made with the weights after
``steps - 1`` updates. Checked here with ``steps=3`` against a second copy that takes 2 steps and
then runs that forward pass itself.
"""

from __future__ import annotations

import pytest
import torch

from testtime.methods import create_method
from testtime.methods.base import METHODS, Method
from testtime.methods.tent import confident_example_model
from testtime.models import create_model

# method -> (config overrides that make a step visibly move the output, the step's forward pass)
CASES = {
    "tent": (dict(lr=0.05), lambda m, x: m.model(x)),
    "eata": (dict(lr=0.05, momentum=0.0), lambda m, x: m.model(x)),
    "sar": (dict(lr=0.05, momentum=0.0), lambda m, x: m.model(x)),
    "cotta": (dict(lr=0.05, mt=0.5, n_augmentations=2), lambda m, x: m.pseudo_label(x)),
}


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet8", num_classes=4) if name == "cotta" else confident_example_model()


@pytest.mark.filterwarnings("ignore:eata. no source data")
@pytest.mark.parametrize("name", sorted(CASES))
def test_before_order_returns_the_last_steps_forward_pass(name):
    overrides, forward = CASES[name]
    assert METHODS.get(name).before_logits == "last"
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    three = create_method(name, _model(name), steps=3, **overrides)
    two = create_method(name, _model(name), steps=2, **overrides)
    one = create_method(name, _model(name), steps=1, **overrides)
    out = three.step(x, "before")
    two.step(x, "before")
    with torch.no_grad():
        expected = forward(two, x).float()  # the third step's forward pass, after two updates
    torch.testing.assert_close(out, expected)
    first = one.step(x, "before")  # the pre-update prediction
    assert (out - first).abs().max() > 1e-4, "the updates should change the prediction"


def test_default_is_the_first_forward_pass():
    class _Grad(METHODS.get("tent")):
        before_logits = "first"

    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    m = _Grad(_model("tent"), _Grad.Config(steps=3, lr=0.05))
    ref = create_method("tent", _model("tent"), steps=1, lr=0.05)
    torch.testing.assert_close(m.step(x, "before"), ref.step(x, "before"))
    assert Method.before_logits == "first"

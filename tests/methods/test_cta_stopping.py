"""CTA's label-free early stopping: the rule's logic, and what it does inside the iterations."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.methods import create_method
from testtime.methods.cta import converged
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector


def _bundle(seed=0):
    torch.manual_seed(seed)
    m = create_model("resnet8", 4)
    return ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)


def _x(n=8, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _weights(m):
    """Parameters and BN statistics (not ``num_batches_tracked``, a count of forward passes)."""
    return {k: v.clone() for k, v in m.model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_rule_needs_patience_changes_in_a_row_at_or_below_eps():
    assert not converged([], 0.1)
    assert converged([0.5, 0.1], 0.1)  # the last change only, patience 1; "at or below"
    assert not converged([0.5, 0.11], 0.1)
    assert not converged([0.05, 0.5, 0.05], 0.1, patience=2)  # not two in a row
    assert converged([0.5, 0.05, 0.02], 0.1, patience=2)
    assert not converged([0.02], 0.1, patience=2)  # fewer changes than the patience
    assert not converged([0.01, math.nan], 0.1)  # NaN (a non-finite loss) never converges
    with pytest.raises(ValueError, match="patience must be >= 1"):
        converged([0.0], 0.1, patience=0)


def test_loss_rule_stops_after_the_first_update_when_any_change_counts():
    """eps huge: iteration 2 observes a change <= eps and does not update; 1 update was made, the
    same update as a 1-step run (iteration 1's views are the same draws)."""
    x = _x()
    early = create_method("cta", _bundle(), steps=5, lr=1e-3, stop="loss", stop_eps=1e9)
    one = create_method("cta", _bundle(), steps=1, lr=1e-3)
    early.adapt(x)
    one.adapt(x)
    assert early.last_steps == 1 and one.last_steps == 1
    w1, w2 = _weights(early), _weights(one)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # the recorded change is the relative change of the loss between iterations 1 and 2
    assert len(early._changes) == 1 and early._changes[0] >= 0


def test_loss_rule_with_eps_zero_runs_every_iteration_like_no_rule():
    x = _x()
    ruled = create_method("cta", _bundle(), steps=3, lr=1e-3, stop="loss", stop_eps=0.0)
    plain = create_method("cta", _bundle(), steps=3, lr=1e-3)
    a, b = ruled(x), plain(x)
    assert ruled.last_steps == plain.last_steps == 3
    assert torch.equal(a, b)
    # two changes recorded (between iterations 1-2 and 2-3), each |L_k - L_(k-1)| / |L_(k-1)| > 0
    assert len(ruled._changes) == 2 and all(c > 0 for c in ruled._changes)


def test_loss_rule_change_is_the_relative_change_of_the_loss():
    """Record the loss of every iteration independently (a hook on nt_xent's output) and compare."""
    x = _x()
    m = create_method("cta", _bundle(), steps=3, lr=1e-3, stop="loss", stop_eps=0.0)
    seen = []
    orig = m.loss

    def spy(inp):
        loss, logits = orig(inp)
        seen.append(float(loss.detach()))
        return loss, logits

    m.loss = spy
    m.adapt(x)
    expect = [abs(seen[k] - seen[k - 1]) / abs(seen[k - 1]) for k in (1, 2)]
    assert m._changes == pytest.approx(expect, rel=1e-12)


def test_prediction_rule_stops_when_no_prediction_changes():
    """lr 0 leaves the weights unchanged, so iteration 2's predictions equal iteration 1's: stop."""
    x = _x()
    m = create_method("cta", _bundle(), steps=6, lr=0.0, stop="predictions", stop_eps=0.0)
    m.adapt(x)
    assert m._changes == [0.0] and m.last_steps == 1
    # a large step changes predictions; with eps 0 and patience 3 the rule needs 3 still iterations
    m2 = create_method("cta", _bundle(), steps=3, lr=1e-1, stop="predictions", stop_eps=0.0, stop_patience=3)
    m2.adapt(x)
    assert m2.last_steps == 3 and len(m2._changes) == 2
    assert all(0.0 <= c <= 1.0 for c in m2._changes)


def test_reset_and_a_new_batch_start_the_rule_afresh():
    x = _x()
    m = create_method("cta", _bundle(), steps=4, lr=1e-3, stop="loss", stop_eps=1e9)
    m.adapt(x)
    m.reset()
    m.adapt(x)
    assert m.last_steps == 1 and len(m._changes) == 1


@pytest.mark.parametrize(
    "over, msg",
    [({"stop": "plateau"}, "stop must be one of none, loss, predictions"),
     ({"stop": "loss", "stop_eps": -1.0}, "stop_eps must be >= 0"),
     ({"stop": "loss", "stop_patience": 0}, "stop_patience >= 1")],
)
def test_bad_stop_settings_fail_clearly(over, msg):
    with pytest.raises(ValueError, match=msg):
        create_method("cta", _bundle(), **over)

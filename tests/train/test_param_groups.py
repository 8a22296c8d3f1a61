"""airbench94's parameter groups in the one trainer: frozen parameters and the BN-bias lr scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from testtime.config import identity_dict, strip_later_fields
from testtime.data.split import ImageSplit
from testtime.models import create_model
from testtime.train import StopTraining, SupervisedObjective, TrainConfig, fit
from testtime.train.trainer import param_groups

CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-2, warmup_epochs=0.5, checkpoint_every=3, log_every=100,
                  optimizer="sgd", momentum=0.85, weight_decay=1e-3)
AIRBENCH = TrainConfig(**{**CFG.__dict__, "frozen_params": ("encoder.stem.weight", "encoder.layers.*.bn*.weight"),
                          "bn_bias_lr_scale": 64.0})


def _split(n=96, seed=0, size=16):
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 4
    img = rng.integers(0, 255, (n, size, size, 3)) // 2 + (labels * 30)[:, None, None, None]
    return ImageSplit(np.clip(img, 0, 255).astype(np.uint8), labels, ("a", "b", "c", "d"), "toy")


def _objective(seed=0):
    torch.manual_seed(seed)
    m = create_model("airbench-small", 4)
    return SupervisedObjective(m.encoder, m.fc)


def _state(obj):
    return {f"{n}.{k}": v.clone() for n, m in obj.modules.items() for k, v in m.state_dict().items()}


def test_groups_leave_frozen_out_and_scale_bn_biases():
    obj = _objective()
    groups = param_groups(obj, AIRBENCH)
    names = {id(p): n for n, p in obj.named_parameters()}
    main, bias = ({names[id(p)] for p in g["params"]} for g in groups)
    assert "encoder.stem.weight" not in main | bias and "encoder.stem.bias" in main
    assert not any(n.endswith(("bn1.weight", "bn2.weight")) for n in main | bias)
    assert bias == {n for n in names.values() if n.endswith(("bn1.bias", "bn2.bias"))} and len(bias) == 6
    assert groups[0]["lr_scale"] == 1.0 and "weight_decay" not in groups[0]
    assert groups[1]["lr_scale"] == 64.0 and groups[1]["weight_decay"] == pytest.approx(1e-3 / 64)
    # the defaults: one group with every trainable parameter
    (only,) = param_groups(obj, CFG)
    assert [id(p) for p in only["params"]] == [id(p) for p in obj.parameters()]


def test_frozen_parameters_stay_and_the_rest_trains(tmp_path):
    obj = _objective()
    before = _state(obj)
    steps = []

    def watch(step, logs):
        steps.append(step)

    fit(obj, _split(), AIRBENCH, tmp_path, "s", log=None, on_step=watch)
    after = _state(obj)
    assert torch.equal(before["encoder.stem.weight"], after["encoder.stem.weight"])
    assert torch.equal(before["encoder.layers.0.bn1.weight"], after["encoder.layers.0.bn1.weight"])
    assert not torch.equal(before["encoder.stem.bias"], after["encoder.stem.bias"])
    assert not torch.equal(before["encoder.layers.0.bn1.bias"], after["encoder.layers.0.bn1.bias"])
    assert all(p.requires_grad for p in obj.parameters())  # restored for whoever trains the modules next
    meta = json.loads((tmp_path / "s.json").read_text())["meta"]["train_config"]
    assert meta["frozen_params"] == list(AIRBENCH.frozen_params) and meta["bn_bias_lr_scale"] == 64.0


def test_bn_bias_step_is_scaled():
    """One plain SGD step (no momentum, no decay): a BN bias moves 64x as far as without the scale."""
    base = TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0, final_lr=1e-3, optimizer="sgd",
                       momentum=0.0, checkpoint_every=0)
    moved = []
    for scale in (1.0, 64.0):
        obj = _objective()
        b0 = obj.modules["encoder"].layers[0].bn1.bias.detach().clone()

        def stop(step, logs):
            raise StopTraining

        with pytest.raises(StopTraining):
            fit(obj, _split(), TrainConfig(**{**base.__dict__, "bn_bias_lr_scale": scale}), None, "s", log=None,
                on_step=stop)
        moved.append(obj.modules["encoder"].layers[0].bn1.bias.detach() - b0)
    assert moved[0].abs().sum() > 0
    torch.testing.assert_close(moved[1], 64 * moved[0], rtol=1e-4, atol=1e-9)


def test_resume_with_groups_matches_an_uninterrupted_run(tmp_path):
    data = _split()
    ref = _objective()
    fit(ref, data, AIRBENCH, tmp_path / "ref", "s", log=None)

    def kill(step, logs):
        if step == 7:
            raise StopTraining

    with pytest.raises(StopTraining):
        fit(_objective(), data, AIRBENCH, tmp_path / "run", "s", log=None, on_step=kill)
    resumed = _objective()
    assert fit(resumed, data, AIRBENCH, tmp_path / "run", "s", log=None).resumed_from == 6
    a, b = _state(ref), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="frozen_params: 'encoder.nope' matches no trainable parameter"):
        fit(_objective(), _split(), TrainConfig(**{**CFG.__dict__, "frozen_params": ("encoder.nope",)}),
            tmp_path, "s", log=None)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="bn_bias_lr_scale must be > 0"):
        TrainConfig(bn_bias_lr_scale=0.0)
    with pytest.raises(ValueError, match="frozen_params must be non-empty"):
        TrainConfig(frozen_params=("",))


def test_defaults_leave_the_identity_as_before():
    """Checkpoints and stored cells written before the fields existed keep matching (LATER_FIELDS)."""
    ident = identity_dict(TrainConfig())
    assert "frozen_params" not in ident and "bn_bias_lr_scale" not in ident
    assert strip_later_fields({"frozen_params": [], "bn_bias_lr_scale": 1.0}) == {}  # as read back from JSON
    assert "frozen_params" in identity_dict(AIRBENCH)

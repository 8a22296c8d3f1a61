"""Source-time training of ttt / ttt++ through the one trainer: checkpoints, reload, statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from testtime.config import config_to_dict
from testtime.data.split import ImageSplit
from testtime.methods import create_method
from testtime.train.pipeline import PipelineConfig, config_from_dict
from testtime.train.ttt_stages import AuxStageConfig, RotationJointObjective, load_aux_model, train_aux_stage


def _split(n=48, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return ImageSplit(images, rng.integers(0, 3, n).astype(np.int64), ("a", "b", "c"), "toy")


def _cfg():
    return config_from_dict(
        PipelineConfig, {"supervised": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "log_every": 100}}
    )


@pytest.mark.parametrize("stage", ["ttt", "ttt++"])
def test_stage_trains_saves_and_reloads(tmp_path, stage):
    model = train_aux_stage(_cfg(), tmp_path, _split(), stage, AuxStageConfig(stats_batch_size=16), log=None)
    assert (tmp_path / f"{stage}.safetensors").is_file() and (tmp_path / f"{stage}.json").is_file()
    again = load_aux_model(tmp_path / stage)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    if stage == "ttt++":
        assert again.has_source_stats and int(again.stats_encoder.count) == 48 - 16  # the first batch is the reference
    # a second call loads instead of retraining, and the method accepts the model
    reloaded = train_aux_stage(_cfg(), tmp_path, _split(), stage, AuxStageConfig(stats_batch_size=16), log=None)
    assert torch.equal(reloaded.fc.weight, model.fc.weight)
    out = create_method(stage, again, steps=1)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("stage", ["ttt", "ttt++"])
def test_a_checkpoint_of_other_settings_is_refused_and_one_of_another_device_is_reused(tmp_path, stage):
    """A stored ttt / ttt++ model is reused only for the settings it was trained with (its aux-stage
    config, training schedule, seed, ...); the device it was trained on does not count."""
    aux = AuxStageConfig(stats_batch_size=16)
    model = train_aux_stage(_cfg(), tmp_path, _split(), stage, aux, log=None)
    with pytest.raises(ValueError, match="trained with another aux stage config"):
        train_aux_stage(_cfg(), tmp_path, _split(), stage, AuxStageConfig(stats_batch_size=16, rotation_weight=0.5),
                        log=None)
    longer = config_from_dict(PipelineConfig, {"supervised": {"epochs": 2, "batch_size": 16, "warmup_epochs": 0,
                                                              "log_every": 100}})
    with pytest.raises(ValueError, match="trained with another peer train"):
        train_aux_stage(longer, tmp_path, _split(), stage, aux, log=None)
    with pytest.raises(ValueError, match="trained with another (peer train|seed)"):
        train_aux_stage(config_from_dict(PipelineConfig, {**config_to_dict(_cfg()), "seed": 1}), tmp_path, _split(),
                        stage, aux, log=None)
    side_path = tmp_path / f"{stage}.json"
    side = json.loads(side_path.read_text())
    side["meta"]["peer_train"]["train"]["device"] = "cuda"  # as if trained on a GPU
    side_path.write_text(json.dumps(side))
    reloaded = train_aux_stage(_cfg(), tmp_path, _split(), stage, aux, log=None)
    assert torch.equal(reloaded.fc.weight, model.fc.weight)


def test_rotation_objective_expand_and_rand():
    from testtime.models import create_model
    from testtime.models.heads import with_aux_head

    m = with_aux_head(create_model("resnet8", num_classes=3), "rotation")
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for rotation in ("expand", "rand"):
        obj = RotationJointObjective(m.encoder, m.fc, m.aux, rotation=rotation)
        loss, logs = obj.loss(x, y, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and {"ce", "rot", "acc", "rot_acc"} <= set(logs)
    with pytest.raises(ValueError, match="rotation must be 'expand' or 'rand'"):
        RotationJointObjective(m.encoder, m.fc, m.aux, rotation="all")


def test_load_rejects_other_checkpoints(tmp_path):
    from testtime.train.checkpoint import save_modules

    save_modules(tmp_path / "x", {"fc": torch.nn.Linear(2, 2)}, {"arch": "resnet8"})
    with pytest.raises(ValueError, match="not a ttt / ttt\\+\\+ model checkpoint"):
        load_aux_model(tmp_path / "x")

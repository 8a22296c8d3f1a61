"""``peer_train`` for the ttt / ttt++ source stages: init from the supervised model (encoder + classifier
loaded, aux head seeded), the train override, the checkpoint record and the refusal of another init."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import testtime.train.ttt_stages as ttt_stages
from testtime.config import identity_dict
from testtime.data.split import ImageSplit
from testtime.models import create_model
from testtime.train.checkpoint import save_modules
from testtime.train.pipeline import PipelineConfig, _train_cfg, config_from_dict, run_stages
from testtime.train.trainer import fit
from testtime.train.ttt_stages import AuxStageConfig, RotationJointObjective, build_aux_model, initial_aux_model

SUP = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "lr": 5e-3, "log_every": 100}
TUNE = {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "lr": 1e-2, "optimizer": "sgd", "log_every": 100}
AUX = AuxStageConfig(stats_batch_size=16)
TASK = {"ttt": "rotation", "ttt++": "simclr"}


def _split(n: int = 48) -> ImageSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)  # 16 px: the size plays no part here
    return ImageSplit(images, rng.integers(0, 3, n).astype(np.int64), ("a", "b", "c"), "toy")


def _cfg(**peer_train) -> PipelineConfig:
    return config_from_dict(PipelineConfig, {"supervised": SUP, "peer_train": peer_train})


def _meta(path) -> dict:
    return json.loads(path.read_text())["meta"]


def _fresh(stage: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_aux_model("resnet8", 3, TASK[stage])


@pytest.mark.parametrize("stage", ["ttt", "ttt++"])
def test_initial_model_takes_the_supervised_encoder_and_fc_and_a_seeded_head(stage):
    torch.manual_seed(123)
    sup = create_model("resnet8", 3)
    model = initial_aux_model(_cfg(init="supervised"), _split(), stage, sup=sup)
    state, fresh = model.state_dict(), _fresh(stage).state_dict()
    for k, v in sup.state_dict().items():  # every supervised tensor (encoder.*, fc.*), copied
        assert torch.equal(state[k], v) and state[k].data_ptr() != v.data_ptr(), k
    aux = [k for k in fresh if k.startswith("aux.")]
    assert aux and all(torch.equal(state[k], fresh[k]) for k in aux)  # the head: as built with the seed
    assert not torch.equal(fresh["fc.weight"], sup.fc.weight)  # so the copy did change encoder + fc
    scratch = initial_aux_model(_cfg(), _split(), stage).state_dict()  # no supervised model: all as built
    assert all(torch.equal(v, fresh[k]) for k, v in scratch.items())


def test_a_supervised_model_that_does_not_fit_fails_naming_the_keys():
    with pytest.raises(
        ValueError,
        match=r"^peer_train.init=supervised: the supervised model does not fit ttt's "
        r"encoder \+ classifier \(shape mismatch \['fc.bias', 'fc.weight'\]\)$",
    ):
        initial_aux_model(_cfg(init="supervised"), _split(), "ttt", sup=create_model("resnet8", 4))


def _spy_fit(monkeypatch) -> dict:
    """Record the modules' state when ``fit`` starts (before any step), then train as usual."""
    seen: dict = {}

    def spy(objective, data, config, *args, **kwargs):
        named = {"head": "fc", "projector": "aux"}  # JointObjective's names of the model's fc and aux
        seen["state"] = {f"{named.get(n, n)}.{k}": v.detach().clone() for n, m in objective.modules.items()
                         for k, v in m.state_dict().items()}  # fmt: skip
        return fit(objective, data, config, *args, **kwargs)

    monkeypatch.setattr(ttt_stages, "fit", spy)
    return seen


@pytest.mark.parametrize("stage", ["ttt", "ttt++"])
def test_stage_with_init_supervised_trains_the_supervised_model_first_and_records_it(tmp_path, monkeypatch, stage):
    cfg = _cfg(init="supervised", train=TUNE)
    seen = _spy_fit(monkeypatch)
    model = ttt_stages.train_aux_stage(cfg, tmp_path, _split(), stage, AUX, log=None)
    assert (tmp_path / "supervised.safetensors").is_file()  # missing, so trained first (as the peers)
    sup = run_stages(cfg, tmp_path, _split(), stages=("supervised",), log=None).supervised
    fresh = _fresh(stage).state_dict()
    for k, v in sup.state_dict().items():
        assert torch.equal(seen["state"][k], v), k
    assert all(torch.equal(seen["state"][k], v) for k, v in fresh.items() if k.startswith("aux."))
    assert not torch.equal(model.encoder.conv1.weight, sup.encoder.conv1.weight)  # and it trained
    names = ("ttt",) if stage == "ttt" else ("ttt++-joint", "ttt++")
    for name in names:
        meta = _meta(tmp_path / f"{name}.json")
        tcfg = json.loads(json.dumps(identity_dict(_train_cfg(cfg, cfg.peer_train.train))))
        assert meta["peer_train"] == {"init": "supervised", "train": tcfg}, name
    meta = _meta(tmp_path / f"{names[0]}.json")  # the fit: 48 // 8 = 6 sgd steps (supervised: 3, adam)
    assert (meta["step"], meta["train_config"]["optimizer"], meta["train_config"]["batch_size"]) == (6, "sgd", 8)
    again = ttt_stages.train_aux_stage(cfg, tmp_path, _split(), stage, AUX, log=None)  # same init: reused
    assert torch.equal(again.fc.weight, model.fc.weight)
    before = (tmp_path / f"{stage}.safetensors").read_bytes()
    with pytest.raises(
        ValueError,
        match=re.escape(stage) + r".safetensors was trained with peer_train.init='supervised', "
        r"now 'scratch'; use another --run-dir",
    ) as err:
        ttt_stages.train_aux_stage(_cfg(train=TUNE), tmp_path, _split(), stage, AUX, log=None)
    assert "\n" not in str(err.value) and (tmp_path / f"{stage}.safetensors").read_bytes() == before


@pytest.mark.parametrize("name", ["ttt", "ttt.resume", "ttt++-joint.resume", "ttt++-joint", "ttt++"])
def test_a_checkpoint_without_a_record_counts_as_scratch_and_is_refused_before_any_work(tmp_path, name):
    save_modules(tmp_path / name, {"fc": torch.nn.Linear(2, 2)}, {"kind": "aux-head-model"})  # pre-peer_train meta
    stage = "ttt" if name.startswith("ttt.") or name == "ttt" else "ttt++"
    with pytest.raises(
        ValueError,
        match=re.escape(name) + r".safetensors was trained with peer_train.init='scratch', "
        r"now 'supervised'",
    ):
        ttt_stages.train_aux_stage(_cfg(init="supervised"), tmp_path, _split(), stage, AUX, log=None)
    assert not (tmp_path / "supervised.safetensors").exists()


def test_default_trains_exactly_as_before_and_records_scratch(tmp_path):
    cfg = _cfg()
    ttt_stages.train_aux_stage(cfg, tmp_path / "new", _split(), "ttt", log=None)
    assert not (tmp_path / "new" / "supervised.safetensors").exists()  # scratch needs no supervised model
    meta = _meta(tmp_path / "new" / "ttt.json")
    assert meta["peer_train"] == {"init": "scratch", "train": meta["train_config"]}
    assert meta["train_config"]["batch_size"] == 16 and meta["step"] == 3  # the supervised TrainConfig
    torch.manual_seed(cfg.seed)  # the procedure before peer_train: seed, build, fit with cfg.supervised
    m = build_aux_model("resnet8", 3, "rotation")
    fit(RotationJointObjective(m.encoder, m.fc, m.aux), _split(), _train_cfg(cfg, cfg.supervised), tmp_path / "old",
        "ttt", log=None)  # fmt: skip
    new, old = load_file(tmp_path / "new" / "ttt.safetensors"), load_file(tmp_path / "old" / "ttt.safetensors")
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)

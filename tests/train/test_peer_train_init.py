"""``peer_train``: the peers' source models fine-tuned from the supervised model (init, train override,
checkpoint records, bad values) and the bench source identity of peer / ttt and other kinds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import testtime.train.peer_stages as peer_stages
from testtime.bench.cells import BenchRun
from testtime.config import PeerTrainConfig, config_from_dict, config_to_dict, strip_later_fields
from testtime.data.split import ImageSplit
from testtime.models import create_model
from testtime.store.db import canonical_json
from testtime.train.pipeline import PipelineConfig, run_stages

SUP = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "lr": 5e-3}
TUNE = {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "lr": 1e-2, "optimizer": "sgd"}


def _split(n: int = 48) -> ImageSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)  # 16 px: the size plays no part here
    return ImageSplit(images, rng.integers(0, 3, n).astype(np.int64), ("a", "b", "c"), "toy")


HEADS = {"nc-ttt": {"embed_dim": 16}}  # NC-TTT's 1536 projector channels would make its stage 10x slower


def _cfg(**peer_train) -> PipelineConfig:
    return config_from_dict(PipelineConfig, {"supervised": SUP, "peer_train": peer_train, "peer_heads": HEADS})


def _spy_fit(monkeypatch) -> dict:
    """Record the peer model's state when ``fit`` starts (before any step), then train as usual."""
    seen: dict = {}
    real = peer_stages.fit

    def spy(objective, data, config, *args, **kwargs):
        seen["state"] = {k: v.detach().clone() for k, v in objective.model.state_dict().items()}
        seen["config"] = config
        seen["padding"] = objective.augment.padding
        return real(objective, data, config, *args, **kwargs)

    monkeypatch.setattr(peer_stages, "fit", spy)
    return seen


def _meta(path) -> dict:
    return json.loads(path.read_text())["meta"]


@pytest.mark.parametrize("stage", ["clust3", "nc-ttt"])
def test_init_supervised_starts_from_the_supervised_weights_with_seeded_heads(tmp_path, monkeypatch, stage):
    cfg = _cfg(init="supervised", train=TUNE)
    seen = _spy_fit(monkeypatch)
    model = peer_stages.train_peer_stage(cfg, tmp_path, _split(), stage, log=None)
    sup = run_stages(cfg, tmp_path, _split(), stages=("supervised",), log=None).supervised
    start = seen["state"]
    for k, v in sup.state_dict().items():  # encoder.* and fc.*: every supervised tensor, at the start
        assert torch.equal(start[k], v), k
    torch.manual_seed(cfg.seed)  # the heads: as built from scratch with the seed
    fresh = peer_stages.build_peer_model(stage, "resnet8", 3, head_config=peer_stages.peer_head_config(cfg, stage))
    heads = {k: v for k, v in fresh.state_dict().items() if k.startswith("heads.")}
    assert heads and all(torch.equal(start[k], v) for k, v in heads.items())
    assert not torch.equal(fresh.encoder.state_dict()["conv1.weight"], sup.encoder.state_dict()["conv1.weight"])
    # the override trained it: 2 epochs of 48 // 16 = 3 steps, sgd (the supervised model: 1 epoch, 3 steps)
    meta, sup_meta = _meta(tmp_path / f"{stage}.json"), _meta(tmp_path / "supervised.json")
    assert (meta["step"], meta["train_config"]["epochs"], meta["train_config"]["optimizer"]) == (6, 2.0, "sgd")
    assert (sup_meta["step"], sup_meta["train_config"]["optimizer"]) == (3, "adam")
    assert meta["peer_train"] == {"init": "supervised", "train": meta["train_config"]}
    assert not torch.equal(model.encoder.conv1.weight, sup.encoder.conv1.weight)  # and it did train


def test_default_is_scratch_with_the_supervised_train_config(tmp_path, monkeypatch):
    cfg = _cfg()
    seen = _spy_fit(monkeypatch)
    peer_stages.train_peer_stage(cfg, tmp_path, _split(), "clust3", log=None)
    assert not (tmp_path / "supervised.safetensors").exists()  # scratch needs no supervised model
    torch.manual_seed(cfg.seed)
    fresh = peer_stages.build_peer_model("clust3", "resnet8", 3)
    assert all(torch.equal(seen["state"][k], v) for k, v in fresh.state_dict().items())
    meta = _meta(tmp_path / "clust3.json")
    assert (meta["step"], meta["train_config"]["epochs"], meta["peer_train"]["init"]) == (3, 1.0, "scratch")
    assert seen["padding"] == cfg.supervised.crop_padding  # the train config's crop, not a fixed 4


@pytest.mark.parametrize("stage", ["clust3", "rec-ttt"])
def test_peer_training_crops_with_the_train_configs_padding(tmp_path, monkeypatch, stage):
    cfg = _cfg(init="supervised", train={**TUNE, "crop_padding": 2})
    seen = _spy_fit(monkeypatch)
    peer_stages.train_peer_stage(cfg, tmp_path, _split(), stage, log=None)
    assert seen["padding"] == 2


def test_a_checkpoint_of_another_init_is_not_reused(tmp_path):
    peer_stages.train_peer_stage(_cfg(init="supervised", train=SUP), tmp_path, _split(), "clust3", log=None)
    before = (tmp_path / "clust3.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"clust3.safetensors was trained with peer_train.init='supervised', "
                                         r"now 'scratch'; use another --run-dir") as err:
        peer_stages.train_peer_stage(_cfg(init="scratch", train=SUP), tmp_path, _split(), "clust3", log=None)
    assert "\n" not in str(err.value) and (tmp_path / "clust3.safetensors").read_bytes() == before


def test_supervised_weights_that_do_not_fit_fail_naming_the_keys():
    peer = peer_stages.build_peer_model("clust3", "resnet8", 4)
    with pytest.raises(ValueError, match=r"does not fit clust3's encoder \+ classifier \(shape mismatch "
                                         r"\['fc.bias', 'fc.weight'\]\)$"):
        peer_stages.load_supervised_weights(peer, create_model("resnet8", 3), "clust3")
    sup = create_model("resnet8", 4)
    sup.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"unexpected \['extra.bias', 'extra.weight'\]"):
        peer_stages.load_supervised_weights(peer, sup, "clust3")


@pytest.mark.parametrize("values", [{"peer_train": {"init": "pretrained"}}, {"peer_train": {"init": "Supervised"}}])
def test_bad_init_is_one_line_when_the_config_is_built(values):
    with pytest.raises(ValueError) as err:
        config_from_dict(PipelineConfig, values)
    bad = values["peer_train"]["init"]
    assert str(err.value) == f"peer_train.init must be one of scratch, supervised, got {bad!r}"


def test_bad_init_from_the_command_line():
    from testtime.commands.train import load_config

    with pytest.raises(ValueError, match=r"^peer_train.init must be one of scratch, supervised, got 'x'$"):
        load_config("demo", None, ["peer_train.init=x"])


def _run(cfg: PipelineConfig) -> BenchRun:
    run = BenchRun.__new__(BenchRun)  # source_identity reads only the config (no data, no models)
    run.cfg = cfg
    return run


def test_source_identity_gets_peer_train_only_for_peers_and_ttt_and_only_when_not_default():
    base = {"name": "x", "supervised": SUP, "peer_heads": {"clust3": {"projectors": 1}}}
    default = _run(config_from_dict(PipelineConfig, base))
    tuned = _run(config_from_dict(PipelineConfig, {**base, "peer_train": {"init": "supervised", "train": TUNE}}))
    c = strip_later_fields(config_to_dict(default.cfg))  # fields added since at their old value: left out
    data = {k: v for k, v in c["data"].items() if k not in ("root", "root_env", "eval_seed")}
    common = {"seed": 0, "data": data, "model": {"arch": "resnet8", "norm": "batch"}, "supervised": c["supervised"]}
    expected = {  # the identities as they were before peer_train existed
        "supervised": {"kind": "supervised", **common},
        "aligned": {"kind": "aligned", **common, "ssl": c["ssl"], "align": c["align"]},
        "clust3": {"kind": "clust3", **common, "peer_heads": {"projectors": 1}},
        "rec-ttt": {"kind": "rec-ttt", **common},
    }
    for kind, want in expected.items():
        assert canonical_json(default.source_identity(kind)) == canonical_json(want), kind
    for kind in ("supervised", "aligned"):
        assert tuned.source_identity(kind) == default.source_identity(kind), kind
    tuned_peer = config_from_dict(PeerTrainConfig, {"init": "supervised", "train": TUNE})
    record = strip_later_fields(config_to_dict(tuned_peer))
    for kind in ("clust3", "nc-ttt", "rec-ttt", "ttt", "ttt++"):  # ttt / ttt++ train by peer_train too
        assert tuned.source_identity(kind) == {**default.source_identity(kind), "peer_train": record}, kind


def test_cpu_preset_fine_tunes_the_peers_and_keeps_the_other_identities():
    from testtime.commands.train import load_config

    cfg = load_config("cifar10-cpu", None, [])
    assert cfg.peer_train.init == "supervised"
    t = cfg.peer_train.train
    assert (t.epochs, t.optimizer, t.lr, t.momentum, t.weight_decay, t.warmup_epochs) == (1, "sgd", 0.02, 0.9, 5e-4, 0)
    assert (t.final_lr, t.channels_last, t.crop_padding, t.checkpoint_every, t.batch_size) == (1e-4, True, 2, 50, 256)
    values = {k: v for k, v in config_to_dict(cfg).items() if k != "peer_train"}
    without = _run(config_from_dict(PipelineConfig, values))
    for kind in ("supervised", "aligned", "probe", "joint"):
        assert _run(cfg).source_identity(kind) == without.source_identity(kind), kind
    for kind in ("nc-ttt", "ttt"):
        assert "peer_train" in _run(cfg).source_identity(kind) and "peer_train" not in without.source_identity(kind)


def test_cpu_preset_weighs_clust3s_clustering_as_the_mean_over_its_projectors():
    from testtime.commands.train import load_config
    from testtime.train.peer_stages import peer_head_config

    head = peer_head_config(load_config("cifar10-cpu", None, []), "clust3")
    assert head.weight == pytest.approx(1 / (len(head.layers) * head.projectors), rel=1e-5)  # 1/30, not the sum's 1
    assert peer_head_config(load_config("cifar10-cpu", None, ["peer_heads.clust3.weight=1"]), "clust3").weight == 1

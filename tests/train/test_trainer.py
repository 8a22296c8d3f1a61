"""The one trainer: checkpoints, resume after a kill, bad checkpoints, objectives that optimise."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from testtime.data.split import ImageSplit
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector
from testtime.train import (
    AlignObjective,
    AlignWeights,
    JointObjective,
    LinearProbeObjective,
    SimCLRObjective,
    StopTraining,
    SupervisedObjective,
    TrainConfig,
    fit,
    load_checkpoint,
    load_modules,
    lr_at,
    save_modules,
)
from testtime.train.trainer import recipe


def _split(n=96, seed=0, size=16):
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 4
    # class-dependent colour so that a few steps can learn something
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.int64)
    img = base[labels][:, None, None, :] + rng.integers(-40, 40, (n, size, size, 3))
    return ImageSplit(np.clip(img, 0, 255).astype(np.uint8), labels, ("r", "g", "b", "y"), "toy")


def _weights(modules):
    return {f"{n}.{k}": v.clone() for n, m in modules.items() for k, v in m.state_dict().items()}


CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.5, checkpoint_every=3, log_every=100)


def _sup_objective(seed=0):
    torch.manual_seed(seed)
    m = create_model("resnet8", 4)
    return SupervisedObjective(m.encoder, m.fc)


def _ssl_objective(seed=0):
    torch.manual_seed(seed)
    m = create_model("resnet8", 4)
    return SimCLRObjective(m.encoder, projector(m.feature_dim, identity=True), tau=0.1)


@pytest.mark.parametrize("make", [_sup_objective, _ssl_objective])
def test_resume_after_kill_ends_with_same_weights(tmp_path, make):
    data = _split()
    ref = make()
    whole = fit(ref, data, CFG, tmp_path / "ref", "stage", log=None)

    killed = make()

    def kill(step, logs):
        if step == 7:  # after the checkpoint of step 6, one step is lost
            raise StopTraining

    with pytest.raises(StopTraining):
        fit(killed, data, CFG, tmp_path / "run", "stage", on_step=kill, log=None)
    assert (tmp_path / "run" / "stage.resume.safetensors").is_file()
    assert not (tmp_path / "run" / "stage.safetensors").exists()
    resumed = make()  # a fresh process: new modules, weights come from the checkpoint
    res = fit(resumed, data, CFG, tmp_path / "run", "stage", log=None)
    assert res.resumed_from == 6
    a, b = _weights(ref.modules), _weights(resumed.modules)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not (tmp_path / "run" / "stage.resume.safetensors").exists()
    # the logged rows, the last one included (its average spans the stop), are those of the whole run
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in res.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in whole.history]


def test_checkpoint_sidecar_hash_and_config(tmp_path):
    obj = _sup_objective()
    fit(obj, _split(), CFG, tmp_path, "sup", meta={"arch": "resnet8"}, log=None)
    side = json.loads((tmp_path / "sup.json").read_text())
    assert len(side["sha256"]) == 64
    assert side["meta"]["arch"] == "resnet8" and side["meta"]["train_config"]["seed"] == 0
    assert "torch" in side["environment"]
    tensors, meta = load_checkpoint(tmp_path / "sup")
    assert any(k.startswith("model.encoder.") for k in tensors)


def test_corrupted_checkpoint_fails_before_loading(tmp_path):
    m = create_model("resnet8", 4)
    save_modules(tmp_path / "ck", {"encoder": m.encoder}, {"arch": "resnet8"})
    raw = bytearray((tmp_path / "ck.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "ck.safetensors").write_bytes(bytes(raw))
    fresh = create_model("resnet8", 4)
    before = _weights({"e": fresh.encoder})
    with pytest.raises(ValueError, match="corrupted"):
        load_modules(tmp_path / "ck", {"encoder": fresh.encoder})
    after = _weights({"e": fresh.encoder})
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    m8 = create_model("resnet8", 4)
    save_modules(tmp_path / "ck", {"encoder": m8.encoder}, {"arch": "resnet8"})
    m20 = create_model("resnet20", 4)
    with pytest.raises(ValueError, match="another architecture"):
        load_modules(tmp_path / "ck", {"encoder": m20.encoder})


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_checkpoint(tmp_path / "nothing")


def test_final_checkpoint_is_reused(tmp_path):
    data = _split()
    a = _sup_objective()
    fit(a, data, CFG, tmp_path, "s", log=None)
    b = _sup_objective(seed=1)
    res = fit(b, data, CFG, tmp_path, "s", log=None)
    assert res.steps == 0
    wa, wb = _weights(a.modules), _weights(b.modules)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, final_lr=1e-6)
    assert lr_at(0, 100, 10, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, 10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, 100, 10, cfg) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-6)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(1e-6)


def test_bad_config_and_data():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="larger than the training set"):
        fit(_sup_objective(), _split(8), TrainConfig(batch_size=16), None, log=None)
    for bad, match in [({"crop_padding": -1}, "crop_padding"), ({"optimizer": "lamb"}, "optimizer"),
                       ({"momentum": 1.0}, "momentum"), ({"label_smoothing": 1.0}, "label_smoothing")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_sgd_recipe_trains_and_resume_is_bit_identical(tmp_path):
    """The fast-CIFAR options (Nesterov SGD, label smoothing, channels_last, crop padding 2): the loss falls,
    and a run stopped after a checkpoint and resumed ends with the same weights as an uninterrupted one."""
    from testtime.transforms import CropFlipConfig

    cfg = TrainConfig(epochs=3, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.85, weight_decay=1e-3,
                      label_smoothing=0.2, channels_last=True, crop_padding=2, warmup_epochs=0, log_every=2,
                      checkpoint_every=3)

    def objective():
        m = _sup_objective().modules
        return SupervisedObjective(m["encoder"], m["head"], CropFlipConfig(padding=cfg.crop_padding),
                                   label_smoothing=cfg.label_smoothing)

    obj = objective()
    whole = fit(obj, _split(64), cfg, None, log=None)
    assert whole.history[-1]["ce"] < whole.history[0]["ce"]
    ref = {k: v.clone() for k, v in obj.modules["encoder"].state_dict().items()}

    def stop(step, logs):
        if step == 6:
            raise StopTraining

    with pytest.raises(StopTraining):
        fit(objective(), _split(64), cfg, tmp_path, "s", on_step=stop, log=None)
    obj2 = objective()
    fit(obj2, _split(64), cfg, tmp_path, "s", log=None)
    for k, v in obj2.modules["encoder"].state_dict().items():
        assert torch.equal(v, ref[k]), k


def _first_last(res, key):
    return res.history[0][key], res.history[-1][key]


def test_supervised_and_probe_and_joint_reduce_their_losses():
    data = _split(128)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=2e-3, warmup_epochs=0, log_every=4)
    res = fit(_sup_objective(), data, cfg, None, log=None)
    first, last = _first_last(res, "ce")
    assert last < first
    torch.manual_seed(0)
    m = create_model("resnet8", 4)
    feats = torch.nn.Sequential(m.encoder, projector(m.feature_dim, identity=True))
    res = fit(LinearProbeObjective(feats, torch.nn.Linear(m.feature_dim, 4)), data, cfg, None, log=None)
    first, last = _first_last(res, "ce")
    assert last < first
    enc_before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in enc_before.items())  # probe froze it
    torch.manual_seed(0)
    y = create_model("resnet8", 4)
    res = fit(JointObjective(y.encoder, y.fc, projector(y.feature_dim), tau=0.1), data, cfg, None, log=None)
    assert res.history[-1]["ce"] < res.history[0]["ce"]


def test_alignment_keeps_f_frozen_and_reduces_eq4():
    data = _split(128)
    torch.manual_seed(0)
    sup = create_model("resnet8", 4)
    fit(_sup_like(sup), data, TrainConfig(epochs=4, batch_size=32, lr=2e-3, warmup_epochs=0), None, log=None)
    f_before = {k: v.clone() for k, v in sup.encoder.state_dict().items()}
    torch.manual_seed(1)
    g = create_model("resnet8", 4).encoder
    pi = projector(sup.feature_dim)
    obj = AlignObjective(g, pi, sup.encoder, sup.fc, AlignWeights(tau=0.5))
    res = fit(obj, data, TrainConfig(epochs=6, batch_size=32, lr=2e-3, warmup_epochs=0, log_every=4), None, log=None)
    assert res.history[-1]["align"] < res.history[0]["align"]
    assert all(torch.equal(v, sup.encoder.state_dict()[k]) for k, v in f_before.items())
    _ = ProjectedClassifier(g, pi, sup.fc)


def _sup_like(model):
    return SupervisedObjective(model.encoder, model.fc)


def test_final_checkpoint_of_another_config_is_refused(tmp_path):
    data = _split()
    fit(_sup_objective(), data, CFG, tmp_path, "s", log=None)
    other = TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0.5, checkpoint_every=3, log_every=100)
    with pytest.raises(ValueError, match="another train config"):
        fit(_sup_objective(), data, other, tmp_path, "s", log=None)


def test_final_checkpoint_of_another_device_is_reused(tmp_path):
    """Where a run goes is not what it trains: a checkpoint written under device=cuda (its sidecar's
    train_config says so) loads on the CPU with no step and its weights; another recipe is still refused."""
    data = _split()
    first = _sup_objective()
    fit(first, data, CFG, tmp_path, "s", log=None)
    path = tmp_path / "s.json"
    side, meta = _sidecar_meta(path)
    assert meta["train_config"]["device"] == "cpu"
    meta["train_config"]["device"] = "cuda"
    path.write_text(json.dumps(side))
    obj = _sup_objective(seed=1)
    assert fit(obj, data, CFG, tmp_path, "s", log=None).steps == 0
    before, after = _weights(first.modules), _weights(obj.modules)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    nested = {"lr": 0.1, "device": "cuda", "inner": {"device": "cpu", "seed": 1}}
    assert recipe(nested) == {"lr": 0.1, "inner": {"seed": 1}}
    with pytest.raises(ValueError, match=re.escape(f"trained with another train config (train_config.lr was "
                                                   f"{CFG.lr!r}, now {CFG.lr * 2!r}); use another --run-dir")):
        fit(_sup_objective(), data, TrainConfig(**{**CFG.__dict__, "lr": CFG.lr * 2}), tmp_path, "s", log=None)


def _sidecar_meta(path):
    side = json.loads(path.read_text())
    return side, side.get("meta", side)


@pytest.mark.parametrize("stored", ["absent", "zero"])
def test_checkpoint_from_before_a_later_field_is_reused(tmp_path, stored):
    """A checkpoint written before TrainConfig.cutout existed (no key) or by the code that first wrote it
    (``cutout: 0``) is the same training as ``cutout=0`` now; another value is refused (LATER_FIELDS)."""
    data = _split()
    fit(_sup_objective(), data, CFG, tmp_path, "s", log=None)
    path = tmp_path / "s.json"
    side, meta = _sidecar_meta(path)
    assert "cutout" not in meta["train_config"]  # written without the later field at its old value
    if stored == "zero":
        meta["train_config"]["cutout"] = 0
        path.write_text(json.dumps(side))
    assert fit(_sup_objective(seed=1), data, CFG, tmp_path, "s", log=None).steps == 0
    with pytest.raises(ValueError, match=re.escape("(train_config.cutout was absent, now 4)")):
        fit(_sup_objective(seed=1), data, TrainConfig(**{**CFG.__dict__, "cutout": 4}), tmp_path, "s", log=None)


def test_cutout_is_recorded_when_on(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "cutout": 4, "epochs": 0.5})
    fit(_sup_objective(), _split(), cfg, tmp_path, "s", log=None)
    assert _sidecar_meta(tmp_path / "s.json")[1]["train_config"]["cutout"] == 4


# Lookahead (airbench94's EMA with syncs): CFG has 12 steps (6 per epoch), checkpoints at 3, 6, 9
LOOK = TrainConfig(**{**CFG.__dict__, "lookahead_every": 4})


class _AirbenchLookahead:
    """airbench94's ``LookaheadState`` as published (github.com/KellerJordan/airbench), the reference."""

    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


def test_lookahead_matches_airbench_reference():
    """Syncs at steps 4, 8 and 12 with decay 0.95**5 * (s / 12)**3, then the EMA: the same weights, bit for
    bit, as airbench's LookaheadState driven from a callback of a run without the option."""
    data = _split()
    on = _sup_objective()
    fit(on, data, LOOK, None, log=None)
    ref = _sup_objective()
    states = {n: _AirbenchLookahead(m) for n, m in ref.modules.items()}

    def sync(step, logs):
        if step % 4 == 0:
            for n, s in states.items():
                with torch.no_grad():
                    s.update(ref.modules[n], decay=0.95**5 * (step / 12) ** 3)

    fit(ref, data, CFG, None, on_step=sync, log=None)
    for n, s in states.items():
        with torch.no_grad():
            s.update(ref.modules[n], decay=1.0)
    a, b = _weights(on.modules), _weights(ref.modules)
    assert any("running_mean" in k for k in a)  # BN statistics are averaged too
    assert all(torch.equal(a[k], b[k]) for k in a)
    off = _sup_objective()
    fit(off, data, CFG, None, log=None)
    c = _weights(off.modules)
    assert all(torch.isfinite(v).all() for v in a.values())
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the option changes the weights


def test_lookahead_off_is_the_default_and_writes_no_ema(tmp_path):
    data = _split()
    default, off = _sup_objective(), _sup_objective()
    fit(default, data, TrainConfig(**{k: v for k, v in CFG.__dict__.items() if not k.startswith("lookahead")}),
        None, log=None)
    fit(off, data, TrainConfig(**{**CFG.__dict__, "lookahead_every": 0}), None, log=None)
    a, b = _weights(default.modules), _weights(off.modules)
    assert all(torch.equal(a[k], b[k]) for k in a)

    def kill(step, logs):
        if step == 4:
            raise StopTraining

    with pytest.raises(StopTraining):
        fit(_sup_objective(), data, CFG, tmp_path, "s", on_step=kill, log=None)
    tensors, _ = load_checkpoint(tmp_path / "s.resume")
    assert not any(k.startswith("lookahead.") for k in tensors)


def test_lookahead_resume_after_kill_is_bit_identical(tmp_path):
    data = _split()
    ref = _sup_objective()
    fit(ref, data, LOOK, tmp_path / "ref", "stage", log=None)

    def kill(step, logs):
        if step == 7:  # after the checkpoint of step 6, between the syncs of steps 4 and 8
            raise StopTraining

    with pytest.raises(StopTraining):
        fit(_sup_objective(), data, LOOK, tmp_path / "run", "stage", on_step=kill, log=None)
    tensors, _ = load_checkpoint(tmp_path / "run" / "stage.resume")
    ema = {k for k in tensors if k.startswith("lookahead.")}
    assert any(k.endswith("running_var") for k in ema) and any(k.startswith("lookahead.head.") for k in ema)
    assert not any(k.endswith("num_batches_tracked") for k in ema)
    resumed = _sup_objective(seed=1)
    assert fit(resumed, data, LOOK, tmp_path / "run", "stage", log=None).resumed_from == 6
    a, b = _weights(ref.modules), _weights(resumed.modules)
    assert all(torch.equal(a[k], b[k]) for k in a)
    side = json.loads((tmp_path / "run" / "stage.json").read_text())
    assert side["meta"]["train_config"]["lookahead_every"] == 4
    assert "lookahead_decay" not in side["meta"]["train_config"]  # at its default: a later field's old value


def test_lookahead_config_errors():
    for bad, match in [({"lookahead_every": -1}, "lookahead_every"), ({"lookahead_decay": 1.0}, "lookahead_decay"),
                       ({"lookahead_decay": -0.1}, "lookahead_decay")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="exceeds the run's 12 steps"):
        fit(_sup_objective(), _split(), TrainConfig(**{**CFG.__dict__, "lookahead_every": 13}), None, log=None)


def test_environment_names_the_decoder_and_the_commit():
    """Checkpoint sidecars record what a bit-for-bit retraining depends on beyond torch and numpy."""
    import PIL

    from testtime.train.checkpoint import environment

    env = environment()
    assert env["pillow"] == PIL.__version__
    assert env["torch"] == torch.__version__
    assert env["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())  # e.g. AVX2, AVX512
    assert env["cpu_model"]  # /proc/cpuinfo's model name on Linux
    commit = env.get("git_commit")  # present when running from a git checkout (this test suite does)
    assert commit is None or (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit))


def test_git_commit_only_for_a_tracked_file(tmp_path):
    """A file tracked by its repository gives HEAD; an untracked one (a package installed into a virtual
    environment inside another project's checkout) and one outside any repository give None."""
    import shutil
    import subprocess

    from testtime.train.checkpoint import git_commit_of

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "tracked.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "tracked.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (repo / "untracked.py").write_text("y = 2\n")
    outside = tmp_path / "outside.py"
    outside.write_text("z = 3\n")
    assert git_commit_of(repo / "tracked.py") == head
    assert git_commit_of(repo / "untracked.py") is None
    assert git_commit_of(outside) is None

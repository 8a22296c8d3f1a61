"""A grid's source models' clean accuracy: measured once per model on the whole test split, then stored."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from testtime.bench.source_models import WeightsChangedError, record_clean_accuracy
from testtime.data import ImageSplit
from testtime.store import ResultStore, model_key
from testtime.train.checkpoint import weights_fingerprint


def brightness_split() -> ImageSplit:
    """300 class-1 images of grey 200, 150 class-0 of grey 100 and 150 class-0 of grey 140 (2x2, 1 channel)."""
    grey = np.array([200] * 300 + [100] * 150 + [140] * 150, dtype=np.uint8)
    labels = np.array([1] * 300 + [0] * 300, dtype=np.int64)
    return ImageSplit(np.repeat(grey, 4).reshape(600, 2, 2, 1), labels, ("dark", "bright"), "grey/test")


def brightness_model(sign: float) -> nn.Module:
    """Class 1 when the BN-normalised mean brightness is above 0 (``sign`` = -1: the other way round).

    Eval mode (running mean 0.5): grey 200 and 140 -> class 1, grey 100 -> class 0, so 450 of 600 right
    (75%); test-batch BN (batch mean about 0.63): grey 140 -> class 0 too, so all right (100%)."""
    mean = nn.Linear(4, 1)
    bn = nn.BatchNorm1d(1)
    logits = nn.Linear(1, 2)
    with torch.no_grad():
        mean.weight.fill_(0.25), mean.bias.zero_()
        bn.running_mean.fill_(0.5), bn.running_var.fill_(1.0)
        logits.weight.copy_(torch.tensor([[-sign], [sign]])), logits.bias.zero_()
    return nn.Sequential(nn.Flatten(), mean, bn, logits).eval()


def fake_run(models: dict[str, nn.Module], calls: list[str]) -> SimpleNamespace:
    split = brightness_split()

    def model(kind):
        calls.append(kind)
        return models[kind]

    cfg = SimpleNamespace(seed=3, model=SimpleNamespace(arch="lin"))
    return SimpleNamespace(data=SimpleNamespace(pool=split, test=None), cfg=cfg, device="cpu", dataset=lambda: "grey",
                           source_identity=lambda k: {"kind": k, "x": 1}, model=model,
                           weights=lambda k: weights_fingerprint(models[k]))


def test_each_model_is_measured_once_and_stored_with_its_identity():
    models = {"supervised": brightness_model(1.0), "joint": brightness_model(-1.0)}
    calls, lines = [], []
    run = fake_run(models, calls)
    store = ResultStore.memory()
    assert record_clean_accuracy(run, store, ["supervised", "joint"], log=lines.append) == 2
    rows = {r["kind"]: r for r in store.models()}
    assert (rows["supervised"]["accuracy_eval"], rows["supervised"]["accuracy_test_bn"]) == (75.0, 100.0)
    assert (rows["joint"]["accuracy_eval"], rows["joint"]["accuracy_test_bn"]) == (25.0, 0.0)
    sup = rows["supervised"]
    assert (sup["split"], sup["n_images"], sup["seed"], sup["backbone"], sup["dataset"]) == ("grey/test", 600, 3,
                                                                                               "lin", "grey")
    assert sup["identity"] == {"kind": "supervised", "x": 1} and sup["wall_s"] > 0
    assert sup["key"] == model_key("supervised", {"kind": "supervised", "x": 1}, "grey/test", 600, 3)
    assert lines[0].startswith("[clean] supervised: eval mode 75.00%, test-batch BN 100.00% on grey/test (600 images)")
    bn = models["supervised"][2]  # measured on a copy: the model is left as it was
    assert not bn.training and bn.momentum == 0.1 and bn.running_mean.item() == 0.5
    calls.clear(), lines.clear()
    assert record_clean_accuracy(run, store, ["supervised", "joint"], log=lines.append) == 0
    assert calls == [] and lines == ["[clean] stored already: supervised, joint"]
    assert sup["weights"] == weights_fingerprint(models["supervised"]) != rows["joint"]["weights"]


def test_a_run_dir_with_other_weights_than_the_stored_rows_is_refused_before_any_write():
    models = {"supervised": brightness_model(1.0)}
    store = ResultStore.memory()
    record_clean_accuracy(fake_run(models, []), store, ["supervised"], log=None)
    before = store.models()
    retrained = {"supervised": brightness_model(1.0)}
    with torch.no_grad():
        retrained["supervised"][1].weight.add_(1e-7)  # the same recipe, other rounding: another fingerprint
    with pytest.raises(WeightsChangedError, match=r"other weights than the run dir holds now \(source model "
                                                  r"'supervised' .*move the store away or give another run dir"):
        record_clean_accuracy(fake_run(retrained, []), store, ["supervised"], log=None)
    assert store.models() == before
    record_clean_accuracy(fake_run({"supervised": brightness_model(1.0)}, []), store, ["supervised"], log=None)


def test_a_row_stored_before_fingerprints_gets_the_current_one_once():
    models = {"supervised": brightness_model(1.0)}
    store = ResultStore.memory()
    record_clean_accuracy(fake_run(models, []), store, ["supervised"], log=None)
    store.conn.execute("UPDATE models SET weights = NULL")
    lines = []
    assert record_clean_accuracy(fake_run(models, []), store, ["supervised"], log=lines.append) == 0
    fp = weights_fingerprint(models["supervised"])
    assert store.models()[0]["weights"] == fp and lines[0].startswith(f"[clean] supervised: weights {fp[:16]} recorded")


def test_the_test_subset_is_used_when_there_is_no_pool():
    run = fake_run({"supervised": brightness_model(1.0)}, [])
    run.data = SimpleNamespace(pool=None, test=run.data.pool)
    store = ResultStore.memory()
    record_clean_accuracy(run, store, ["supervised"], log=None)
    assert [(r["split"], r["accuracy_eval"]) for r in store.models()] == [("grey/test", pytest.approx(75.0))]

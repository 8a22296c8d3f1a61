"""Checkpoints of a continual stream (testtime.bench.streams): when one is loaded, and when it is not."""

from __future__ import annotations

import torch

from testtime.bench.streams import drop_stream, load_stream, save_stream, stream_key, stream_path
from testtime.methods import create_method
from testtime.models import create_model

NAMES = ["gaussian_noise", "fog", "contrast"]
W = "a" * 64  # the source weights' fingerprint the streams start from


def _cell(corruption="contrast", **over):
    cell = {"method": "cotta", "label": "cotta", "corruption": corruption, "severity": 5, "seed": 1,
            "protocol": "continual", "backbone": "resnet8", "dataset": "cifar10", "hparams": {"lr": 1e-3},
            "config": {"corruption_order": NAMES, "batch_size": 8}}
    return {**cell, **over}


def _method():
    torch.manual_seed(0)
    return create_method("cotta", create_model("resnet8", num_classes=4), n_augmentations=2, ap=1.0)


def _x(seed):
    return torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _adapted(tmp_path, done=("gaussian_noise",)):
    m = _method()
    m(_x(1))
    m(_x(2))
    path = stream_path(tmp_path, _cell())
    save_stream(path, m, _cell(), list(done), W)
    return m, path


def test_key_leaves_out_the_corruption_only():
    assert stream_key(_cell("fog")) == stream_key(_cell("contrast"))
    assert stream_key(_cell(hparams={"lr": 1e-4})) != stream_key(_cell())
    assert stream_key(_cell(seed=2)) != stream_key(_cell())
    assert stream_path("r", _cell()).parent.name == "streams"
    assert stream_path("r", _cell(label="a/b")).name.startswith("a_b-sev5-seed1-")


def test_a_saved_stream_loads_and_goes_on_as_the_one_that_went_on(tmp_path):
    m, path = _adapted(tmp_path, done=NAMES[:2])
    fresh = _method()
    assert load_stream(path, fresh, _cell("contrast"), NAMES, W) == 2
    torch.testing.assert_close(fresh(_x(3)), m(_x(3)), rtol=0, atol=0)


def test_not_loaded_when_absent_of_another_stream_or_order_or_past_the_cell(tmp_path):
    m, path = _adapted(tmp_path, done=NAMES[:2])
    before = {k: v.clone() for k, v in _method().state_dict().items()}
    cases = [
        (stream_path(tmp_path, _cell(seed=3)), _cell(seed=3), NAMES, W),  # no file
        (path, _cell(hparams={"lr": 1e-4}), NAMES, W),  # another setting's stream
        (path, _cell(), ["fog", "gaussian_noise", "contrast"], W),  # another order
        (path, _cell("fog"), NAMES, W),  # the checkpoint is past the cell asked for: replay
        (path, _cell(), NAMES, "b" * 64),  # started from other source weights (retrained in the run dir)
    ]
    for p, cell, names, weights in cases:
        fresh = _method()
        assert load_stream(p, fresh, cell, names, weights) == 0
        assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_a_damaged_checkpoint_is_not_loaded_and_drop_removes_both_files(tmp_path):
    _, path = _adapted(tmp_path)
    st = path.with_name(path.name + ".safetensors")
    st.write_bytes(st.read_bytes()[:-10])  # e.g. two shards wrote the two files in turn
    fresh = _method()
    assert load_stream(path, fresh, _cell(), NAMES, W) == 0
    _, path = _adapted(tmp_path)
    path.with_name(path.name + ".json").write_text("{not json")
    assert load_stream(path, fresh, _cell(), NAMES, W) == 0
    drop_stream(path)
    assert not list(path.parent.iterdir())

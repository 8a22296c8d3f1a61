"""Contract tests over the method registry: every registered method is tested the moment it exists."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from testtime.bench import Domain, evaluate, get_protocol, list_protocols
from testtime.methods import create_method, list_methods

SEEDED = 0
SIZE = 16  # image side: the contract does not depend on it, and 16 px costs a quarter of CIFAR's 32


def _model(name):
    from testtime.methods import METHODS

    torch.manual_seed(SEEDED)
    return METHODS.get(name).example_model(num_classes=4)


def _batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g)


def _fast(name, model):
    """The method with its light example config (at most 2 steps), so the contract runs quickly."""
    from testtime.methods import METHODS

    return create_method(name, model, config=METHODS.get(name).example_config())


@pytest.fixture(params=list_methods())
def name(request):
    return request.param


def test_output_shape_and_finite(name):
    m = _fast(name, _model(name))
    out = m(_batch())
    assert out.shape == (8, 4)
    assert torch.isfinite(out).all()


def test_only_declared_parameters_change(name):
    m = _fast(name, _model(name))
    declared = set(m.adapted_parameter_names())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m(_batch())
    m(_batch(seed=2))
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= declared, f"{name} changed undeclared parameters: {sorted(changed - declared)[:5]}"
    if m.optimizer is not None and m.config.steps > 0:
        assert changed, f"{name} declares adapted parameters but none changed"


def test_reset_restores_everything_exactly(name):
    m = _fast(name, _model(name))
    state0 = {k: v.clone() for k, v in m.state_dict().items()}
    x1, x2 = _batch(), _batch(seed=2)
    first = m(x1)
    m(x2)
    m.reset()
    for k, v in m.state_dict().items():
        assert torch.equal(v, state0[k]), f"{name}: {k} not restored"
    again = m(x1)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_saved_state_resumes_bit_for_bit_in_a_new_method(name, tmp_path):
    """A method adapted on 2 batches, saved through a checkpoint file (safetensors + JSON) and loaded
    into a fresh method of the same model, predicts batches 3 and 4 exactly as the method that went on:
    what a continual stream resumed in another process relies on (testtime.bench.streams)."""
    from testtime.train.checkpoint import load_checkpoint, save_checkpoint

    model = _model(name)
    fresh = _fast(name, copy.deepcopy(model))
    m = _fast(name, model)
    m(_batch(seed=1))
    m(_batch(seed=2))
    tensors, meta = m.state_tensors()
    save_checkpoint(tmp_path / "s", tensors, meta)
    on = [m(_batch(seed=3)), m(_batch(seed=4))]
    fresh.load_state_tensors(*load_checkpoint(tmp_path / "s"))
    for a, b in zip(on, [fresh(_batch(seed=3)), fresh(_batch(seed=4))]):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), f"{name}: {k} differs after the resumed steps"
    fresh.reset()  # the reset point stays the construction's
    for k, v in _fast(name, _model(name)).state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), f"{name}: {k} not the source's after reset"


def test_episodic_carries_nothing_between_batches(name):
    """Under the episodic protocol, batch 2's predictions equal those of a fresh method on batch 2 alone."""
    from testtime.bench import to_float_batch

    model = _model(name)
    fresh = _fast(name, copy.deepcopy(model))
    m = _fast(name, model)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=16)
    proto = get_protocol("episodic", batch_size=8, shuffle=False)
    res = evaluate(m, [Domain("d", imgs, labels)], proto)
    assert res.total["d"] == 16 and (res.predictions["d"] >= 0).all()
    alone = fresh.step(to_float_batch(imgs[8:])).argmax(1).numpy()
    np.testing.assert_array_equal(res.predictions["d"][8:], alone)


@pytest.mark.parametrize("protocol", list_protocols())
def test_each_protocol_runs(name, protocol):
    from testtime.methods import METHODS

    m = _fast(name, _model(name))
    rng = np.random.default_rng(0)
    doms = [Domain(f"d{i}", rng.integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8),
                   rng.integers(0, 4, size=6)) for i in range(2)]
    p = get_protocol(protocol, batch_size=3 if protocol != "single-sample" else 1)
    if p.batch_size < METHODS.get(name).requirements.min_batch_size:
        with pytest.raises(ValueError, match=re.escape(f"method '{name}' needs batches of at least")):
            evaluate(m, doms, p)
        return
    res = evaluate(m, doms, p)
    assert sum(res.total.values()) == 12
    assert 0.0 <= res.mean_accuracy <= 100.0


def test_batch_size_one(name):
    from testtime.methods import METHODS

    m = _fast(name, _model(name))
    x = _batch(1)
    if METHODS.get(name).requirements.supports_batch_size_1:
        assert m(x).shape == (1, 4)
    else:
        with pytest.raises(ValueError, match=re.escape(name)):
            m(x)


def test_listing_describes_every_method():
    from testtime.methods import METHODS

    for n in list_methods():
        cls = METHODS.get(n)
        assert cls.requirements.describe()
        assert cls.__doc__ and len(cls.__doc__) > 20


def test_state_is_made_on_the_models_device(name):
    """Declared state (buffers, memories, queues) is created where the model lives, so a method made
    around a model already on the GPU runs there without a ``.to()``. Checked without a GPU on the
    ``meta`` device (shapes only); tests/methods/test_contract_cuda.py runs the methods on CUDA."""
    try:
        m = _fast(name, _model(name).to("meta"))
    except (RuntimeError, NotImplementedError) as e:
        if "meta" not in str(e):
            raise
        pytest.skip(f"{name} reads tensor values when it is made ({e}); covered on CUDA only")
    off = [k for k, v in m.state_dict().items() if torch.is_tensor(v) and v.device.type != "meta"]
    assert not off, f"{name}: state made off the model's device: {off[:5]}"

"""Contract tests over the method registry on a CUDA device (skipped without one; never run by CI).

Every registered method, its model moved to the GPU before the method is made, must keep all its
state there, give finite logits there, agree with the same method on the CPU from the same seed
(the random draws of views and augmentations are made on the CPU generator in both cases), and be
restored exactly by ``reset()``. TF32 is switched off for the comparison, so the two devices differ
only by float32 round-off; two adaptation steps can still move that round-off up (Adam normalises
tiny gradients, thresholds such as EATA's entropy margin can flip), hence the tolerance on the
softmax probabilities rather than on bits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_contract import _batch, _fast, _model

from testtime.bench import Domain, evaluate, get_protocol
from testtime.methods import list_methods

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(params=list_methods())
def name(request):
    return request.param


def test_method_runs_on_cuda_and_agrees_with_cpu(name):
    cpu = _fast(name, _model(name))
    gpu = _fast(name, _model(name).cuda())
    x1, x2 = _batch(), _batch(seed=2)
    for x in (x1, x2):
        want = cpu(x)
        got = gpu(x.cuda())
        assert got.device.type == "cuda" and got.shape == (8, 4) and torch.isfinite(got).all()
        diff = (got.softmax(1).cpu() - want.softmax(1)).abs().max().item()
        assert diff < 0.02, f"{name}: CPU and CUDA probabilities differ by {diff:.4f}"
    off = [k for k, v in gpu.state_dict().items() if torch.is_tensor(v) and v.device.type != "cuda"]
    assert not off, f"{name}: state left off the GPU: {off[:5]}"


def test_reset_restores_everything_exactly_on_cuda(name):
    m = _fast(name, _model(name).cuda())
    state0 = {k: v.clone() for k, v in m.state_dict().items()}
    m(_batch().cuda())
    m(_batch(seed=2).cuda())
    m.reset()
    for k, v in m.state_dict().items():
        assert torch.equal(v, state0[k]), f"{name}: {k} not restored on cuda"


def test_evaluate_on_cuda_counts_every_image(name):
    """The protocols' loop (uint8 numpy images in, predictions out) with the model on the GPU."""
    m = _fast(name, _model(name).cuda())
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    res = evaluate(m, [Domain("d", imgs, rng.integers(0, 4, size=16))], get_protocol("reset-per-domain", batch_size=8),
                   device="cuda")
    assert res.total["d"] == 16 and (res.predictions["d"] >= 0).all()

"""CTA's ``checkpoint="stages"`` / ``"blocks"`` (activation checkpointing of g): exact against ``"none"``.

Everything runs in float64 on tiny bundles; "exact" is checked as bitwise equality of the losses,
the gradients, the logits and the whole state (weights, BN running statistics, counters) after two
steps, in every BN mode. Negative controls show the check can fail: without the recomputation's
context (forward-time modes, buffers put back), ``bn="lineage"`` goes wrong.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import CheckpointError

from testtime.methods import _checkpoint, create_method
from testtime.methods._checkpoint import checkpoint_regions, checkpointed
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector


def _bundle(arch="resnet8", through=True):
    torch.manual_seed(0)
    m = create_model(arch, 4)
    pi = projector(m.encoder.out_dim, identity=True)
    return ProjectedClassifier(m.encoder, pi, m.fc, through_projector=through).double()


def _plain_bundle():
    """An encoder without a ``layers`` Sequential: the whole encoder is the one checkpointed region."""
    torch.manual_seed(0)
    g = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return ProjectedClassifier(g, projector(8, identity=True), nn.Linear(8, 4)).double()


def _x(n=6, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _run(bundle, x, **cfg):
    """One loss + backward (the loss, the gradients, the state after it), then a reset and 2 steps."""
    m = create_method(cfg.pop("name", "cta"), copy.deepcopy(bundle), lr=1e-2, **cfg)
    loss, _ = m.loss(x)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    state1 = {k: v.clone() for k, v in m.state_dict().items()}
    m.reset()
    logits = m(x)
    return loss.detach(), grads, state1, logits, m.state_dict()


def _assert_same(a, b):
    assert torch.equal(a[0], b[0])  # loss
    assert a[1].keys() == b[1].keys() and all(torch.equal(v, b[1][k]) for k, v in a[1].items())  # gradients
    assert all(torch.equal(v, b[2][k]) for k, v in a[2].items())  # state after one SSL pass (BN buffers)
    assert torch.equal(a[3], b[3])  # logits after 2 steps
    assert all(torch.equal(v, b[4][k]) for k, v in a[4].items())  # weights, statistics, optimiser-free state


@pytest.mark.parametrize("bn", ["batch", "source", "lineage"])
@pytest.mark.parametrize("arch", ["resnet8", "airbench-small"])
def test_stages_equal_none_bitwise(bn, arch):
    bundle, x = _bundle(arch), _x()
    ref = _run(bundle, x, steps=2, bn=bn, checkpoint="none")
    _assert_same(ref, _run(bundle, x, steps=2, bn=bn, checkpoint="stages"))
    if arch == "resnet8":  # airbench's blocks are its stages
        _assert_same(ref, _run(bundle, x, steps=2, bn=bn, checkpoint="blocks"))
    if bn == "lineage":  # the running statistics did move (once per SSL pass, as without checkpointing)
        start = bundle.state_dict()
        assert any(not torch.equal(v, start[k[len("model."):]]) for k, v in ref[4].items() if "running_mean" in k)


@pytest.mark.parametrize("name, through", [("cta-c", True), ("y-model", False)])
def test_cta_c_and_y_model_share_it(name, through):
    bundle, x = _bundle(through=through), _x()
    _assert_same(_run(bundle, x, name=name, steps=2, checkpoint="none"),
                 _run(bundle, x, name=name, steps=2, checkpoint="stages"))


def test_blocks_with_several_blocks_per_stage_equal_none_bitwise():
    """ResNet-20 (3 blocks per stage: here "blocks" differs from "stages"), smaller batch and images."""
    bundle, x = _bundle("resnet20"), _x(4, 8)
    assert len(checkpoint_regions(bundle.encoder, "blocks")) == 9
    for bn in ("batch", "lineage"):
        _assert_same(_run(bundle, x, steps=2, bn=bn, checkpoint="none"),
                     _run(bundle, x, steps=2, bn=bn, checkpoint="blocks"))


def test_encoder_without_layers_is_checkpointed_whole():
    bundle, x = _plain_bundle(), _x()
    assert checkpoint_regions(bundle.encoder) == checkpoint_regions(bundle.encoder, "blocks") == [bundle.encoder]
    for bn in ("batch", "lineage"):
        _assert_same(_run(bundle, x, steps=2, bn=bn, checkpoint="none"),
                     _run(bundle, x, steps=2, bn=bn, checkpoint="stages"))


def test_regions_are_the_top_level_stages_and_are_recomputed():
    bundle = _bundle()
    regions = checkpoint_regions(bundle.encoder)
    assert regions == list(bundle.encoder.layers) and len(regions) == 3
    assert checkpoint_regions(bundle.encoder, "none") == []
    air = _bundle("airbench-small").encoder
    assert checkpoint_regions(air) == checkpoint_regions(air, "blocks") == list(air.layers)
    calls = []
    conv = regions[0][0].conv1  # first conv of the first stage
    conv.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    with checkpointed(regions):
        z = bundle.ssl_embed(_x())
    assert len(calls) == 1
    z.sum().backward()
    assert len(calls) == 2  # recomputed once, at backward
    assert all("forward" not in r.__dict__ for r in regions)  # the modules are left as they were


def test_naive_recomputation_would_be_wrong_with_lineage(monkeypatch):
    """Negative controls: recomputing with the modes of backward time (lineage BN back in eval mode)
    is caught by torch's own check; recomputing in the forward's modes without putting the buffers
    back silently moves the running statistics twice per SSL pass."""
    bundle, x = _bundle(), _x()
    ref = _run(bundle, x, steps=1, bn="lineage", checkpoint="none")

    @contextlib.contextmanager
    def modes_only(modules, modes):
        now = [m.training for m in modules]
        for m, mode in zip(modules, modes):
            m.training = mode
        yield
        for m, mode in zip(modules, now):
            m.training = mode

    monkeypatch.setattr(_checkpoint, "_as_at_forward", modes_only)
    naive = _run(bundle, x, steps=1, bn="lineage", checkpoint="stages")
    assert torch.equal(ref[0], naive[0]) and all(torch.equal(v, naive[1][k]) for k, v in ref[1].items())
    moved = [k for k, v in ref[2].items() if "running_mean" in k and not torch.equal(v, naive[2][k])]
    assert moved and all(k.startswith("model.encoder.layers.") for k in moved)  # the stem's BN is not checkpointed
    monkeypatch.setattr(_checkpoint, "_as_at_forward", lambda *_: contextlib.nullcontext())
    with pytest.raises(CheckpointError):
        _run(bundle, x, steps=1, bn="lineage", checkpoint="stages")


def test_bad_checkpoint_value_fails_clearly():
    with pytest.raises(ValueError, match="checkpoint must be one of none, stages, blocks; got 'layers'"):
        create_method("cta", _bundle(), checkpoint="layers")

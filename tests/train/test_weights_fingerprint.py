"""`weights_fingerprint`: the sha256 of a module's state dict, the weights' identity a results store keeps."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from testtime.train.checkpoint import weights_fingerprint


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_the_same_weights_give_the_same_fingerprint_and_any_change_another():
    a, b = net(0), net(0)
    fp = weights_fingerprint(a)
    assert len(fp) == 64 and int(fp, 16) >= 0 and fp == weights_fingerprint(b)
    assert weights_fingerprint(net(1)) != fp
    with torch.no_grad():
        b[0].weight.view(-1)[0] += 1e-7  # one weight, one rounding step
    assert weights_fingerprint(b) != fp
    c = net(0)
    c[1].running_mean.fill_(0.5)  # the BN statistics are part of the model
    assert weights_fingerprint(c) != fp
    c = net(0)
    c[1].num_batches_tracked += 1
    assert weights_fingerprint(c) != fp


def test_it_hashes_names_dtypes_shapes_and_bytes_in_name_order():
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0]])), m.bias.fill_(3.0)
    h = hashlib.sha256()
    for name, t in (("bias", m.bias), ("weight", m.weight)):
        h.update(f"{name}|torch.float32|{tuple(t.shape)}|".encode() + t.detach().numpy().tobytes())
    assert weights_fingerprint(m) == h.hexdigest()
    assert weights_fingerprint(m.double()) != h.hexdigest()  # the same values in another dtype

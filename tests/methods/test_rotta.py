"""RoTTA: robust BN, the CSTU memory bank (Algorithm 1) and one timeliness-weighted teacher-student update
(Eq. 9-10) with the teacher's EMA, checked against the paper written by hand (Yuan et al., CVPR 2023)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.rotta import RobustBN, RoTTAConfig
from testtime.models import create_model
from testtime.transforms.cotta_aug import CoTTAAugConfig, cotta_augment


def test_defaults():
    c = RoTTAConfig()
    assert (c.alpha, c.nu, c.memory_size, c.update_every, c.lambda_t, c.lambda_u) == (0.05, 0.001, 64, 64, 1.0, 1.0)
    assert (c.optimizer, c.lr, c.steps) == ("adam", 1e-3, 1)


def test_robust_bn_normalises_with_the_moving_global_statistics():
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    rbn = RobustBN(bn, alpha=0.05).train()
    x = torch.randn(5, 3, 4, 4) * 2 + 1
    mu0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    out = rbn(x)
    mu = 0.95 * mu0 + 0.05 * x.mean(dim=(0, 2, 3))
    var = 0.95 * var0 + 0.05 * x.var(dim=(0, 2, 3), unbiased=False)
    expected = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(rbn.running_mean, mu)
    torch.testing.assert_close(rbn.running_var, var)
    rbn.eval()  # eval: the stored statistics, unchanged
    torch.testing.assert_close(rbn(x), expected)
    torch.testing.assert_close(rbn.running_mean, mu)


class Bank:
    """CSTU written from the paper's Algorithm 1: per-class lists of [id, uncertainty, age]."""

    def __init__(self, capacity, num_classes):
        self.cap, self.c = capacity, num_classes
        self.lists = {k: [] for k in range(num_classes)}

    def score(self, age, unc):  # timeliness + uncertainty, lambda_t = lambda_u = 1
        return 1 / (1 + math.exp(-age / self.cap)) + unc / math.log(self.c)

    def evict_from(self, classes, new_score):
        cands = [(self.score(it[2], it[1]), k, j) for k in classes for j, it in enumerate(self.lists[k])]
        if not cands:
            return True
        best = max(cands, key=lambda t: t[0])
        if best[0] <= new_score:
            return False
        del self.lists[best[1]][best[2]]
        return True

    def add(self, ident, label, unc):
        total = sum(len(v) for v in self.lists.values())
        if len(self.lists[label]) < self.cap / self.c:
            ok = total < self.cap or self.evict_from(
                [k for k, v in self.lists.items() if len(v) == max(len(u) for u in self.lists.values())],
                self.score(0, unc))
        else:
            ok = self.evict_from([label], self.score(0, unc))
        if ok:
            self.lists[label].append([ident, unc, 0])
        for v in self.lists.values():
            for it in v:
                it[2] += 1

    def content(self):  # class by class, insertion order
        return [(it[0], k, it[2]) for k in range(self.c) for it in self.lists[k]]


def test_memory_bank_follows_algorithm_1(make_tiny):
    m = create_method("rotta", make_tiny(), memory_size=6, update_every=10**6)
    bank = Bank(6, 3)
    rng = random.Random(0)
    for i in range(60):
        label, unc = rng.choice([0, 0, 0, 1, 2]), rng.uniform(0, math.log(3))  # an imbalanced stream
        m.add_to_memory(torch.full((1, 1, 1), float(i)), label, unc)
        bank.add(i, label, unc)
        data, ages = m.memory_batch()
        got = [(int(d.item()), int(lab), round(float(a) * 6)) for d, lab, a in
               zip(data.flatten(), torch.sort(m.memory.labels, stable=True).values, ages)]
        assert got == bank.content(), f"after image {i}"
    assert len(bank.content()) == 6 and {k for _, k, _ in bank.content()} == {0, 1, 2}


def rbn_forward(m, x, conv_w, gamma, beta, mean0, var0, alpha=0.05):
    """TinyNet with robust BN in training mode: returns logits and the updated statistics."""
    h = F.conv2d(x, conv_w, padding=1)
    mean = (1 - alpha) * mean0 + alpha * h.mean(dim=(0, 2, 3))
    var = (1 - alpha) * var0 + alpha * h.var(dim=(0, 2, 3), unbiased=False)
    h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + m.bn.eps)
    z = (h * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)).clamp_min(0).mean(dim=(2, 3))
    return z @ m.fc.weight.detach().T + m.fc.bias.detach(), mean.detach(), var.detach()


def test_one_update_matches_the_paper_computed_by_hand(make_tiny, colour_batch):
    kw = dict(weight=(0.5, 1.5), bias=(-0.2, 0.2), running_mean=(-0.1, 0.1), running_var=(0.5, 1.5), fc_scale=4.0)
    ref, model = make_tiny(**kw), make_tiny(**kw)
    x, lr = colour_batch(1, n=6), 0.01
    conv = ref.conv.weight.detach()
    g0, b0 = ref.bn.weight.detach().clone(), ref.bn.bias.detach().clone()
    mu0, var0 = ref.bn.running_mean.clone(), ref.bn.running_var.clone()
    # The teacher (= source) predicts in eval mode: source statistics.
    with torch.no_grad():
        logits, _, _ = rbn_forward(ref, x, conv, g0, b0, mu0, var0, alpha=0.0)
    p = logits.softmax(1)
    labels, uncs = p.argmax(1).tolist(), (-(p * torch.log(p + 1e-6)).sum(1)).tolist()
    bank = Bank(4, 3)
    for i in range(6):
        bank.add(i, labels[i], uncs[i])
    content = bank.content()
    assert len(content) < 6, "the bank should have rejected or evicted some images"
    sup = x[[c[0] for c in content]]
    ages = torch.tensor([c[2] / 4 for c in content])
    strong = cotta_augment(sup, torch.Generator().manual_seed(0), CoTTAAugConfig())
    with torch.no_grad():
        t_out, t_mu, t_var = rbn_forward(ref, sup, conv, g0, b0, mu0, var0)
    g, b = g0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    s_out, s_mu, s_var = rbn_forward(ref, strong, conv, g, b, mu0, var0)
    w = torch.exp(-ages) / (1 + torch.exp(-ages))  # Eq. 10
    loss = (-(t_out.softmax(1) * s_out.log_softmax(1)).sum(1) * w).mean()  # Eq. 9
    gg, gb = torch.autograd.grad(loss, [g, b])
    new_g, new_b = g0 - lr * gg / (gg.abs() + 1e-8), b0 - lr * gb / (gb.abs() + 1e-8)  # Adam, first step

    m = create_method("rotta", model, memory_size=4, update_every=6, lr=lr)
    assert isinstance(model.bn, RobustBN) and sorted(n for n, _ in m.params()) == ["model.bn.bias", "model.bn.weight"]
    out = m(x)
    torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-6)  # the teacher's prediction, before the update
    assert m.updates == 1 and int(m.seen) == 6
    torch.testing.assert_close(m.memory_batch()[1], ages)
    torch.testing.assert_close(model.bn.weight.detach(), new_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.bias.detach(), new_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_mean, s_mu)
    torch.testing.assert_close(model.bn.running_var, s_var)
    torch.testing.assert_close(m.teacher.bn.running_mean, t_mu)
    torch.testing.assert_close(m.teacher.bn.weight, 0.999 * g0 + 0.001 * new_g)
    torch.testing.assert_close(m.teacher.bn.bias, 0.999 * b0 + 0.001 * new_b)
    assert torch.equal(model.conv.weight, ref.conv.weight) and torch.equal(model.fc.weight, ref.fc.weight)


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="method 'rotta' adapts BatchNorm layers but the model has none"):
        create_method("rotta", create_model("resnet8", 4, norm="group"))
    with pytest.raises(ValueError, match="rotta: need steps == 1"):
        create_method("rotta", create_model("resnet8", 4), steps=2)

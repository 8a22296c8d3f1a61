"""TTT++ (Liu et al. 2021): source statistics, one step against an independent computation, queue, bad models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.ttt_pp import TTTPlusPlus, compute_source_statistics
from testtime.models import create_model
from testtime.models.heads import with_aux_head
from testtime.transforms.views import simclr_views


def _model(seed=0):
    torch.manual_seed(seed)
    return TTTPlusPlus.example_model(num_classes=3)


def _images(n, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _simclr_plain(z1, z2, tau):
    """SimCLR / SupCon without labels, anchor by anchor (2B anchors, cosine similarity)."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    b = z1.shape[0]
    terms = []
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        sims = [torch.dot(z[i], z[j]) / tau for j in range(2 * b) if j != i]
        terms.append(-(torch.dot(z[i], z[pos]) / tau - torch.logsumexp(torch.stack(sims), 0)))
    return torch.stack(terms).mean()


def _coral_plain(f, cov_s):
    n, d = f.shape
    mu = f.mean(0, keepdim=True)
    cov_t = (f - mu).t() @ (f - mu) / (n - 1)
    return ((cov_s - cov_t) ** 2).sum() / (4 * d * d)


def test_source_statistics_match_numpy_as_the_official_offline_pass():
    """vita-epfl/ttt-plus-plus ``offline``: batch 1 is the reference, the other batches the statistics."""
    model = with_aux_head(create_model("resnet8", num_classes=3), "simclr", proj_dim=8)
    imgs = (torch.rand(56, 32, 32, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    info = compute_source_statistics(model, imgs, batch_size=16)
    model.eval()  # the statistics are taken in eval mode
    with torch.no_grad():
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        f = model.encoder(x).double().numpy()
    d = f.shape[1]
    first, rest = f[:16], f[16:]  # batches: 0-15 (reference), 16-31, 32-47, 48-55
    np.testing.assert_allclose(model.stats_encoder.mean.numpy(), rest.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.stats_encoder.cov.numpy(), np.cov(rest, rowvar=False), rtol=1e-4, atol=1e-7)
    cov1, mu1 = np.cov(first, rowvar=False), first.mean(0)
    later = [f[16:32], f[32:48], f[48:56]]
    corals = [((cov1 - np.cov(b, rowvar=False)) ** 2).sum() / (4 * d * d) for b in later]
    means = [((mu1 - b.mean(0)) ** 2).mean() for b in later]
    assert info["encoder_coral_ref"] == pytest.approx(np.mean(corals), rel=1e-4)
    assert info["encoder_mean_ref"] == pytest.approx(np.mean(means), rel=1e-4)
    assert int(model.stats_encoder.count) == 40 and info["n"] == 40 and model.has_source_stats
    assert model.stats_aux.cov.shape == (8, 8)


def test_source_statistics_of_a_float64_model():
    model = with_aux_head(create_model("resnet8", num_classes=3), "simclr", proj_dim=8).double()
    names = [n for n, mod in model.named_modules() if type(mod).__name__ == "Normalize"]
    for name in names:  # no input normaliser whose float64 buffers would promote float32 images
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, torch.nn.Identity())
    assert names
    imgs = (torch.rand(32, 32, 32, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    info = compute_source_statistics(model, imgs, batch_size=8)
    assert model.stats_encoder.cov.dtype == torch.float64 and math.isfinite(info["encoder_coral_ref"])
    floats = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255  # float32 input to a float64 model
    assert compute_source_statistics(model, floats, batch_size=8) == pytest.approx(info)


def test_one_step_matches_independent_computation():
    """SGD with momentum (first step = plain SGD) on the TTT++ objective, encoder only."""
    model = _model()
    ref = copy.deepcopy(model)
    x = _images(6)
    cfg = dict(steps=1, lr=0.01, seed=3, queue_size=0)
    m = create_method("ttt++", model, **cfg)
    c = m.config
    m(x)

    v1, v2 = simclr_views(x, torch.Generator().manual_seed(3), c.views)
    ref.encoder.train()
    z = ref.aux(ref.encoder(torch.cat([v1, v2])))
    ssl = _simclr_plain(z[:6], z[6:], 0.5) * (0.5 / 0.07)
    f = ref.encoder(x)
    ref.eval()
    a = ref.aux(f)
    se, sa = ref.stats_encoder, ref.stats_aux
    ext = _coral_plain(f, se.cov) / se.coral_ref + 0.5 * ((f.mean(0) - se.mean) ** 2).mean() / se.mean_ref
    ssh = _coral_plain(a, sa.cov) / sa.coral_ref + 0.5 * ((a.mean(0) - sa.mean) ** 2).mean() / sa.mean_ref
    align = 0.05 * ext + 0.2 * ssh
    loss = ssl + align
    names = [n for n, _ in ref.named_parameters() if n.startswith("encoder.")]
    params = [p for n, p in ref.named_parameters() if n.startswith("encoder.")]
    grads = torch.autograd.grad(loss, params)
    got = dict(m.model.named_parameters())
    for n, p, g in zip(names, params, grads):
        torch.testing.assert_close(got[n], p.detach() - 0.01 * g, rtol=1e-4, atol=1e-6, msg=n)
    for n, p in ref.named_parameters():
        if not n.startswith("encoder."):
            assert torch.equal(got[n], p), f"{n} must stay frozen"


def test_queue_is_declared_state():
    m = create_method("ttt++", _model(), steps=2, queue_size=10)
    m(_images(4, seed=1))
    assert int(m.queue_len) == 4  # one entry per image, not per step
    m(_images(8, seed=2))
    assert int(m.queue_len) == 10 and int(m.queue_ptr) == 2
    m.reset()
    assert int(m.queue_len) == 0 and float(m.queue_encoder.abs().sum()) == 0.0


def test_adaptation_lowers_its_objective():
    """It optimises: five small steps on a batch lower the TTT++ loss computed with fixed views.

    (On this untrained toy model the official lr 0.01 with momentum overshoots; 1e-4 does not.)
    """
    x = _images(16, seed=4)
    m = create_method("ttt++", _model(), steps=5, lr=1e-4, queue_size=0)

    def objective():
        buffers = {n: b.clone() for n, b in m.model.named_buffers()}
        m.generator.manual_seed(123)
        with torch.no_grad():
            loss, _ = m.loss(x)
        for n, b in m.model.named_buffers():  # the loss pass runs BN in train mode: undo its statistics
            b.copy_(buffers[n])
        return float(loss)

    before = objective()
    m.adapt(x)
    after = objective()
    assert math.isfinite(after) and after < before


def test_models_without_projector_or_statistics_fail_before_any_work():
    with pytest.raises(ValueError, match=r"method 'ttt\+\+' needs a model with a SimCLR projector"):
        create_method("ttt++", create_model("resnet8", num_classes=3))
    with pytest.raises(ValueError, match=r"needs an auxiliary 'simclr' head"):
        create_method("ttt++", with_aux_head(create_model("resnet8", num_classes=3), "rotation"))
    with pytest.raises(ValueError, match=r"needs source feature statistics .*compute_source_statistics"):
        create_method("ttt++", with_aux_head(create_model("resnet8", num_classes=3), "simclr"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau must be > 0"):
        create_method("ttt++", _model(), tau=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        compute_source_statistics(_model(), np.zeros((8, 32, 32, 3), np.uint8), batch_size=1)
    with pytest.raises(ValueError, match="need at least 2 \\* batch_size"):
        compute_source_statistics(_model(), np.zeros((8, 32, 32, 3), np.uint8), batch_size=8)
    m = create_method("ttt++", _model(), steps=1)
    with pytest.raises(ValueError, match=r"method 'ttt\+\+' needs batches of at least 2"):
        m(_images(1))


def test_ssl_term_is_the_nt_xent_of_the_library():
    """The plain SimCLR loop used above agrees with testtime.losses.nt_xent (symmetric form)."""
    from testtime.losses import nt_xent

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    torch.testing.assert_close(_simclr_plain(z1, z2, 0.5), nt_xent(z1, z2, 0.5))
    assert F.normalize(z1, dim=1).shape == z1.shape


def test_predict_with_batch_statistics_equals_ptbn_without_steps():
    x = _images(8, seed=6)
    ours = create_method("ttt++", _model(), steps=0, predict_bn="batch")(x)
    ptbn = create_method("bn", _model())(x)
    torch.testing.assert_close(ours, ptbn)
    running = create_method("ttt++", _model(), steps=0)(x)
    torch.testing.assert_close(running, create_method("source", _model())(x))
    with pytest.raises(ValueError, match="predict_bn must be 'running' or 'batch'"):
        create_method("ttt++", _model(), predict_bn="eval")


def test_three_train_mode_encoder_passes_per_step_as_the_official_loop():
    """The official loop runs ``ssh(views)``, ``ext(x)`` and ``head(ext(x))`` with ``ext.train()``: BN
    running statistics move three times per step (momentum 0.1), here checked on the first BN layer."""
    model = _model()
    bn = next(mod for mod in model.encoder.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    calls = []
    bn.register_forward_pre_hook(lambda mod, inp: calls.append((mod.training, inp[0].detach().mean((0, 2, 3)))))
    start = bn.running_mean.clone()
    m = create_method("ttt++", model, steps=2, queue_size=0)
    m.adapt(_images(6))
    train_inputs = [mu for training, mu in calls if training]
    assert len(train_inputs) == 3 * 2
    expected = start
    for mu in train_inputs:
        expected = 0.9 * expected + 0.1 * mu
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-5, atol=1e-6)


def _recorded_alignment_features(monkeypatch):
    """Record the features each alignment call receives; the encoder's are the first of each pair."""
    import testtime.methods.ttt_pp as ttt_pp

    seen = []
    real = ttt_pp.alignment_terms

    def record(feats, stats):
        seen.append(feats.detach().clone())
        return real(feats, stats)

    monkeypatch.setattr(ttt_pp, "alignment_terms", record)
    return lambda: seen[0::2]


@pytest.mark.parametrize("holds_current", [False, True])
def test_queue_is_used_once_full(holds_current, monkeypatch):
    """A queue of 8 with batches of 4: batches 1-2 use their own features only (the official queue is
    used once full); batch 3 uses its 4 + the 8 queued. Default: the 8 of batches 1-2; official variant
    (``queue_holds_current``): batch 3 written over the oldest batch (1), so it counts twice."""
    feats = _recorded_alignment_features(monkeypatch)
    m = create_method("ttt++", _model(), steps=1, lr=1e-3, queue_size=8, queue_holds_current=holds_current)
    for seed in (1, 2, 3):
        m(_images(4, seed=seed))
    f1, f2, f3 = feats()
    assert f1.shape[0] == 4 and f2.shape[0] == 4 and f3.shape[0] == 12
    cur, queued = f3[:4], f3[4:]
    older = cur if holds_current else f1
    torch.testing.assert_close(queued, torch.cat([older, f2]).to(queued.dtype))

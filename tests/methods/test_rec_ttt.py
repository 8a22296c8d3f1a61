"""ReC-TTT (Colussi et al., 2024): its losses, the cross-reconstruction pairing and one AdamW step against
computations written from the paper; the source stage from the supervised model through ``fit``; bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from testtime.losses.reconstruction import global_cosine_distance, symmetric_kl
from testtime.methods import create_method
from testtime.methods.rec_ttt import ReCTTT, ReCTTTHeadConfig
from testtime.models import create_model
from testtime.train.peer_stages import load_peer_model, train_peer_stage
from testtime.train.pipeline import PipelineConfig, config_from_dict


def _model(seed=0):
    torch.manual_seed(seed)
    return ReCTTT.example_model(num_classes=3)


def _images(n, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _cos_dist_plain(t, r):
    """1 - <t, r> / (|t| |r|) per image (maps flattened), averaged over images."""
    t, r = t.reshape(t.shape[0], -1), r.reshape(r.shape[0], -1)
    return (1 - (t * r).sum(1) / (t.norm(dim=1) * r.norm(dim=1))).mean()


def _rec_plain(model, x):
    """The four reconstruction directions of the paper, each a sum over the three stages, averaged."""
    flip = x.flip(-1)
    s1 = model.encoder.stage_outputs(x)
    s2 = model.encoder2.stage_outputs(flip)
    with torch.no_grad():
        t1, t2 = model.teacher.stage_outputs(x), model.teacher.stage_outputs(flip)
    out = model.decoder([torch.cat([s1[i], t1[i], t2[i], s2[i]]) for i in range(3)])
    pairs = [(t1, out[0]), ([f.detach() for f in s1], out[1]), ([f.detach() for f in s2], out[2]), (t2, out[3])]
    return sum(_cos_dist_plain(t[i], o[i]) for t, o in pairs for i in range(3)) / 4


def test_losses_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    t, r = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    torch.testing.assert_close(global_cosine_distance(t, r), _cos_dist_plain(t, r))
    tt = t.clone().requires_grad_(True)
    global_cosine_distance(tt, r).backward()
    assert tt.grad is None and r.grad is not None  # the target is a constant
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    p, q = a.softmax(1), b.softmax(1)
    kl = ((q * (q / p).log()).sum(1) + (p * (p / q).log()).sum(1)).mean()  # over the classes
    torch.testing.assert_close(symmetric_kl(a, b), kl)
    with pytest.raises(ValueError, match="same shape"):
        global_cosine_distance(t, r[:2])


def test_one_step_matches_independent_computation():
    """AdamW's first step: p - lr * wd * p - lr * g / (|g| + eps), on the reconstruction loss."""
    model = _model()
    ref = copy.deepcopy(model)
    x = _images(4)
    lr, wd = 1e-3, 1e-5
    m = create_method("rec-ttt", model, steps=1)
    out = m(x)

    ref.eval()
    for enc in (ref.encoder, ref.encoder2):
        for stage in enc.layers:  # the three stages in train mode, stem and the rest in eval mode
            stage.train()
    loss = _rec_plain(ref, x)
    params = dict(ref.named_parameters())
    trainable = [n for n in params if n.startswith(("encoder.", "encoder2.", "fc.", "fc2."))]
    grads = torch.autograd.grad(loss, [params[n] for n in trainable], allow_unused=True)
    got = dict(m.model.named_parameters())
    for n, gr in zip(trainable, grads):
        if gr is None:  # the classifiers get no gradient from the reconstruction: AdamW leaves them
            assert n.startswith(("fc.", "fc2.")) and torch.equal(got[n], params[n]), n
            continue
        expected = params[n].detach() * (1 - lr * wd) - lr * gr / (gr.abs() + 1e-8)
        sure = gr.abs() > 1e-6  # where |g| ~ eps, float rounding of g changes the step; it stays within lr
        torch.testing.assert_close(got[n][sure], expected[sure], rtol=1e-4, atol=1e-6, msg=n)
        assert ((got[n] - expected).abs() <= lr).all(), n
    for n, p in params.items():  # teacher and decoder frozen
        if n.startswith(("teacher.", "decoder.")):
            assert torch.equal(got[n], p), n
    for (n, b), (_, rb) in zip(m.model.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, rb, msg=n)  # stage BN statistics moved, stem / teacher / decoder not
    ref.eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(got[n])
        expected_out = ref.fc(ref.encoder(x)) + ref.fc2(ref.encoder2(x.flip(-1)))  # the sum of the two heads
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)


def test_adaptation_lowers_the_reconstruction_loss():
    model = _model()
    x = _images(8, seed=3)

    def rec(mdl):
        mdl = copy.deepcopy(mdl).eval()
        with torch.no_grad():
            return float(_rec_plain(mdl, x))

    before = rec(model)
    m = create_method("rec-ttt", model, steps=5)
    m(x)
    assert rec(m.model) < before - 1e-3


def test_missing_heads_fail_naming_the_command(tmp_path):
    with pytest.raises(ValueError, match=r"method 'rec-ttt' needs .*`testtime train rec-ttt`"):
        create_method("rec-ttt", create_model("resnet8", num_classes=3))
    from testtime.train.checkpoint import save_modules

    save_modules(tmp_path / "ttt", {"fc": torch.nn.Linear(2, 2)}, {"kind": "aux-head-model", "task": "rotation"})
    with pytest.raises(ValueError, match=r"method 'rec-ttt' needs .*'aux-head-model'.*`testtime train rec-ttt`"):
        load_peer_model(tmp_path / "ttt", "rec-ttt")
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        ReCTTTHeadConfig(kl_weight=-1)


def test_source_stage_starts_from_the_supervised_model(tmp_path, toy_split):
    """`testtime train rec-ttt`'s function: supervised first, then a few steps; the teacher stays frozen."""
    cfg = config_from_dict(PipelineConfig, {"supervised": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0,
                                                           "log_every": 3}})
    model = train_peer_stage(cfg, tmp_path, toy_split(), "rec-ttt", log=None)
    assert (tmp_path / "supervised.safetensors").is_file() and (tmp_path / "rec-ttt.safetensors").is_file()
    from testtime.train.pipeline import run_stages

    sup = run_stages(cfg, tmp_path, toy_split(), stages=("supervised",), log=None).supervised
    for (k, v), (_, w) in zip(model.teacher.state_dict().items(), sup.encoder.state_dict().items()):
        assert torch.equal(v, w), k  # the teacher is the supervised encoder, untouched by training
    assert not torch.equal(model.encoder.conv1.weight, sup.encoder.conv1.weight)  # the students trained
    again = load_peer_model(tmp_path / "rec-ttt", "rec-ttt")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    out = create_method("rec-ttt", again, steps=1)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()

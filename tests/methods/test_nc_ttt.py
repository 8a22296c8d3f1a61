"""NC-TTT (Osowiechi et al., CVPR 2024): soft targets, the source loss and one test-time step against
computations written from the paper; its source stage through ``fit``; bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from testtime.losses.noise_contrastive import high_noise_posterior
from testtime.methods import create_method
from testtime.methods.nc_ttt import NCTTT, NCTTTHeadConfig
from testtime.models import create_model
from testtime.train.peer_stages import load_peer_model, train_peer_stage
from testtime.train.pipeline import PipelineConfig, config_from_dict


def _model(seed=0, **head):
    torch.manual_seed(seed)
    return NCTTT.source_model(create_model("resnet8", num_classes=3), NCTTTHeadConfig(**{"embed_dim": 16, **head}))


def _images(n, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _posterior_plain(noise, s_high, s_low):
    """p_high(n) / (p_high(n) + p_low(n)) with the Gaussian densities of torch.distributions, per position."""
    lh = torch.distributions.Normal(0.0, s_high).log_prob(noise.double()).sum(1)  # (B, H, W)
    ll = torch.distributions.Normal(0.0, s_low).log_prob(noise.double()).sum(1)
    return torch.softmax(torch.stack([lh, ll]), 0)[0].float()


def _scores_plain(model, f):
    """Discriminator written out: 1x1 convs as einsums, BN with the batch's statistics (train mode)."""
    d = model.heads.discriminator
    h = torch.einsum("behw,ke->bkhw", f, d[0].weight[:, :, 0, 0]) + d[0].bias.view(1, -1, 1, 1)
    mu = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    h = (h - mu) / torch.sqrt(var + d[1].eps) * d[1].weight.view(1, -1, 1, 1) + d[1].bias.view(1, -1, 1, 1)
    h = torch.where(h > 0, h, 0.2 * h)
    return (torch.einsum("bkhw,k->bhw", h, d[3].weight[0, :, 0, 0]) + d[3].bias[0])  # (B, H, W)


def _projected_plain(model, x=None, f1=None):
    f1 = model.encoder.stage_outputs(x)[0] if f1 is None else f1  # layer1 output (B, C, H, W)
    p = model.heads.projector
    return torch.einsum("bchw,ec->behw", f1, p.weight[:, :, 0, 0]) + p.bias.view(1, -1, 1, 1)


def test_soft_targets_are_the_gaussian_likelihood_ratio():
    g = torch.Generator().manual_seed(0)
    d = 6
    noise = torch.cat([torch.randn(3, d, 2, 2, generator=g) * 0.1, torch.randn(3, d, 2, 2, generator=g) * 0.015,
                       torch.randn(2, d, 2, 2, generator=g) * 0.04])  # the last: ambiguous levels
    y = high_noise_posterior(noise, 0.1, 0.015)
    ref = _posterior_plain(noise, 0.1, 0.015)
    ref = torch.where(ref < 1e-6, torch.zeros_like(ref), ref)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-6)
    assert (y[:3] > 0.5).all() and (y[3:6] < 0.5).all()
    with pytest.raises(ValueError, match="0 < std_low < std_high"):
        high_noise_posterior(noise, 0.01, 0.1)


def test_source_loss_matches_independent_computation():
    model = _model()
    model.train()
    x = _images(4)
    feats = model.encoder.stage_outputs(x)
    loss = model.heads.source_loss(feats, torch.Generator().manual_seed(5))

    f = _projected_plain(model, x)  # (B, E, H, W)
    g = torch.Generator().manual_seed(5)  # the same draws: high-noise maps, then low-noise maps
    n = torch.cat([torch.randn(f.shape, generator=g) * 0.1, torch.randn(f.shape, generator=g) * 0.015])
    y = _posterior_plain(n, 0.1, 0.015)
    y = torch.where(y < 1e-6, torch.zeros_like(y), y)
    s = _scores_plain(model, torch.cat([f, f]) + n)
    p = torch.sigmoid(s)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, bce, rtol=1e-5, atol=1e-6)


def test_one_step_matches_independent_computation():
    """Adam's first step on mean(-log(1 - sigmoid(d(pi(f_1(x)))))), stem + layer1 only (extract_layer 1)."""
    model = _model()
    ref = copy.deepcopy(model)
    x = _images(4)
    lr = 1e-3
    m = create_method("nc-ttt", model, steps=1, lr=lr)
    out = m(x)

    ref.train()
    feats = ref.encoder.stage_outputs(x)  # one train-mode pass through every stage, as the method's
    s = _scores_plain(ref, _projected_plain(ref, f1=feats[0]))
    ref_loss = -torch.log(1 - torch.sigmoid(s)).mean()
    updated = ("encoder.conv1.", "encoder.bn1.", "encoder.layers.0.")
    params = dict(ref.named_parameters())
    names = [n for n in params if n.startswith(updated)]
    grads = torch.autograd.grad(ref_loss, [params[n] for n in names])
    got = dict(m.model.named_parameters())
    for n, gr in zip(names, grads):
        torch.testing.assert_close(got[n], params[n].detach() - lr * gr / (gr.abs() + 1e-8), rtol=1e-4, atol=1e-6,
                                   msg=n)
    for n, p in params.items():  # layers 2-3, classifier, projector, discriminator untouched
        if not n.startswith(updated):
            assert torch.equal(got[n], p), n
    assert set(m.adapted_parameter_names()) == {f"model.{n}" for n in names}
    bn_ref = dict(ref.named_buffers())
    for n, b in m.model.named_buffers():
        if "discriminator" not in n:  # the reference wrote the discriminator's BN without its module
            torch.testing.assert_close(b, bn_ref[n], msg=n)
    ref.eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(got[n])
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)


def test_adaptation_makes_clean_features_look_low_noise():
    model = _model()
    x = _images(8, seed=4)

    def score(mdl):
        mdl = copy.deepcopy(mdl).train()
        with torch.no_grad():
            return float(_scores_plain(mdl, _projected_plain(mdl, x)).mean())

    before = score(model)
    m = create_method("nc-ttt", model, steps=5, lr=1e-3)
    m(x)
    assert score(m.model) < before - 1e-3


def test_missing_heads_fail_naming_the_command():
    with pytest.raises(ValueError, match=r"method 'nc-ttt' needs .*`testtime train nc-ttt`"):
        create_method("nc-ttt", create_model("resnet8", num_classes=3))
    from testtime.methods.clust3 import ClusT3, ClusT3HeadConfig

    clust = ClusT3.source_model(create_model("resnet8", num_classes=3), ClusT3HeadConfig(projectors=1))
    with pytest.raises(ValueError, match=r"method 'nc-ttt' needs .*got 'clust3' heads"):
        create_method("nc-ttt", clust)
    with pytest.raises(ValueError, match="0 < std_low < std_high"):
        NCTTTHeadConfig(std_low=0.2)
    with pytest.raises(ValueError, match="the encoder has 3 stages"):
        _model(layer=4)



def test_source_stage_trains_saves_reloads(tmp_path, toy_split):
    """`testtime train nc-ttt`'s function: a few steps of the one trainer lower the discrimination loss."""
    cfg = config_from_dict(PipelineConfig, {"supervised": {"epochs": 3, "batch_size": 16, "warmup_epochs": 0,
                                                           "lr": 5e-3, "log_every": 3}})
    head = NCTTTHeadConfig(embed_dim=16)
    model = train_peer_stage(cfg, tmp_path, toy_split(), "nc-ttt", head, log=None)
    again = load_peer_model(tmp_path / "nc-ttt", "nc-ttt")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert again.head_config == head
    x = torch.from_numpy(toy_split().images[:16]).permute(0, 3, 1, 2).float() / 255

    def disc_loss(mdl):
        mdl = copy.deepcopy(mdl).train()
        with torch.no_grad():
            return float(mdl.heads.source_loss(mdl.encoder.stage_outputs(x), torch.Generator().manual_seed(1)))

    assert disc_loss(again) < disc_loss(_model())  # trained from the same seeded initialisation
    with pytest.raises(ValueError, match=r"method 'clust3' needs .*'nc-ttt'.*`testtime train clust3`"):
        load_peer_model(tmp_path / "nc-ttt", "clust3")
    out = create_method("nc-ttt", again, steps=1)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_preset_changes_the_heads_and_bad_keys_fail_before_work(tmp_path):
    from testtime.commands.train import load_config
    from testtime.train.peer_stages import peer_head_config

    cfg = load_config(None, None, ["peer_heads.nc-ttt.embed_dim=64"])
    assert peer_head_config(cfg, "nc-ttt") == NCTTTHeadConfig(embed_dim=64)
    assert peer_head_config(cfg, "clust3").projectors == 15  # the others keep the paper's heads
    with pytest.raises(ValueError, match=r"unknown key\(s\) peer_heads.nc-ttt.embed; valid: layer, embed_dim"):
        peer_head_config(load_config(None, None, ["peer_heads.nc-ttt.embed=64"]), "nc-ttt")
    bad = load_config(None, None, ["peer_heads.ncttt.embed_dim=64"])
    with pytest.raises(ValueError, match="peer_heads: unknown method.*'ncttt'.*valid: clust3, nc-ttt, rec-ttt"):
        train_peer_stage(bad, tmp_path / "r", None, "nc-ttt", log=None)
    assert not (tmp_path / "r").exists()

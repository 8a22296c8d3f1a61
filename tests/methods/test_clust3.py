"""ClusT3 (Hakim et al., ICCV 2023): the loss and one step against a computation written from the paper,
the per-position assignments (not the official ``view``), its source stage through ``fit``, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from testtime.losses.information_maximization import clustering_information_maximization
from testtime.methods import create_method
from testtime.methods.clust3 import ClusT3, ClusT3HeadConfig, cluster_assignments
from testtime.models import create_model
from testtime.train.peer_stages import load_peer_model, train_peer_stage
from testtime.train.pipeline import PipelineConfig, config_from_dict


def _model(seed=0, **head):
    torch.manual_seed(seed)
    return ClusT3.source_model(create_model("resnet8", num_classes=3), ClusT3HeadConfig(**{"projectors": 2, **head}))


def _images(n, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _im_plain(logits):
    """-I(X; Z) + log K from the definitions: H(Z|X) = mean_n H(p_n), H(Z) = H(mean_n p_n)."""
    p = torch.exp(logits - torch.logsumexp(logits, 1, keepdim=True))  # (N, K)
    h_cond = -(p * torch.log(p)).sum(1).mean()
    pbar = p.mean(0)
    h_marg = -(pbar * torch.log(pbar)).sum()
    return h_cond - h_marg + math.log(logits.shape[1])


def _clust3_loss_plain(model, x):
    """Sum over projectors of L_IM, each 1x1 projector written as an einsum over channels; train mode."""
    model.train()
    feats = model.encoder.stage_outputs(x)
    total = 0.0
    for layer in (1, 2):
        f = feats[layer - 1]  # (B, C, H, W)
        for conv in model.heads.proj[str(layer)]:
            w, b = conv.weight[:, :, 0, 0], conv.bias  # (K, C), (K,)
            z = torch.einsum("bchw,kc->bhwk", f, w) + b  # (B, H, W, K): a distribution per position
            total = total + _im_plain(z.reshape(-1, w.shape[0]))
    return total


def test_information_maximization_is_negative_mutual_information():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g) * 3
    torch.testing.assert_close(clustering_information_maximization(logits), _im_plain(logits), rtol=1e-5, atol=1e-6)
    confident_balanced = torch.eye(4).repeat(3, 1) * 50  # each sample certain, clusters equally used
    assert float(clustering_information_maximization(confident_balanced)) < 1e-6
    collapsed = torch.zeros(12, 4)
    collapsed[:, 0] = 50  # all in one cluster: no information, loss = log K
    assert float(clustering_information_maximization(collapsed)) == pytest.approx(math.log(4), abs=1e-5)
    with pytest.raises(ValueError, match="K >= 2"):
        clustering_information_maximization(torch.zeros(5, 1))


def test_assignments_are_per_position_not_the_official_view():
    z = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # (B, K, H, W)
    a = cluster_assignments(z)  # (B*H*W, K)
    assert a.shape == (8, 3)
    torch.testing.assert_close(a[1 * 4 + 0 * 2 + 1], z[1, :, 0, 1])  # image 1, position (0, 1)
    official = z.view(3, -1).T  # the official reshape: its rows are not the per-position K-vectors
    assert not torch.equal(official, a)


def test_one_step_matches_independent_computation():
    """Adam's first step (p - lr * g / (|g| + eps)) on the paper's loss, stem + layers 1..2 only."""
    model = _model()
    ref = copy.deepcopy(model)
    x = _images(4)
    lr = 1e-3
    probe = create_method("clust3", copy.deepcopy(model), steps=1, lr=lr, extract_layer=2)
    loss, _ = probe.loss(x)
    m = create_method("clust3", model, steps=1, lr=lr, extract_layer=2)
    out = m(x)

    ref_loss = _clust3_loss_plain(ref, x)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    updated = ("encoder.conv1.", "encoder.bn1.", "encoder.layers.0.", "encoder.layers.1.")
    names = [n for n, _ in ref.named_parameters() if n.startswith(updated)]
    params = dict(ref.named_parameters())
    grads = torch.autograd.grad(ref_loss, [params[n] for n in names])
    got = dict(m.model.named_parameters())
    for n, gr in zip(names, grads):
        expected = params[n].detach() - lr * gr / (gr.abs() + 1e-8)
        # g / (|g| + eps) is ill-conditioned where |g| is at float32 summation noise (a 1e-3 relative
        # error of a 6e-8 gradient moves that weight's step by 1e-6): compare the step where the gradient
        # is well above the noise, and elsewhere only its bound |step| <= lr
        well = gr.abs() > 1e-4 * gr.abs().max()
        torch.testing.assert_close(got[n][well], expected[well], rtol=1e-4, atol=1e-6, msg=n)
        assert float((got[n] - params[n]).abs().max()) <= lr * (1 + 1e-4), n
    for n, p in ref.named_parameters():  # layer 3, classifier and projectors untouched
        if not n.startswith(updated):
            assert torch.equal(got[n], p), n
    assert set(m.adapted_parameter_names()) == {f"model.{n}" for n in names}
    for (n, b), (_, rb) in zip(m.model.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, rb, msg=n)  # BN running statistics moved by the train-mode pass
    ref.eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(got[n])
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)  # predicted after, eval mode


def test_adaptation_lowers_the_clustering_loss():
    model = _model()
    x = _images(8, seed=4)
    before = float(_clust3_loss_plain(copy.deepcopy(model), x).detach())
    m = create_method("clust3", model, steps=5, lr=1e-3)
    m(x)
    assert float(_clust3_loss_plain(m.model, x).detach()) < before - 1e-3


def test_missing_heads_fail_naming_the_command():
    plain = create_model("resnet8", num_classes=3)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match=r"method 'clust3' needs .*`testtime train clust3`"):
        create_method("clust3", plain)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(ValueError, match=r"extract_layer must be <= 3"):
        create_method("clust3", _model(), extract_layer=4)
    with pytest.raises(ValueError, match="extract_layer must be >= 1"):
        create_method("clust3", _model(), extract_layer=0)
    with pytest.raises(ValueError, match="clusters must be >= 2"):
        ClusT3HeadConfig(clusters=1)
    with pytest.raises(ValueError, match="the encoder has 3 stages"):
        _model(layers=(4,))



def test_source_stage_trains_saves_reloads(tmp_path, toy_split):
    """`testtime train clust3`'s function: a few steps of the one trainer, checkpoint, reload, adapt."""
    cfg = config_from_dict(PipelineConfig, {"supervised": {"epochs": 2, "batch_size": 16, "warmup_epochs": 0,
                                                           "lr": 5e-3, "log_every": 1}})
    head = ClusT3HeadConfig(projectors=2)
    model = train_peer_stage(cfg, tmp_path, toy_split(), "clust3", head, log=None)
    meta = (tmp_path / "clust3.json").read_text()
    assert '"objective": "clust3-joint"' in meta and (tmp_path / "clust3.safetensors").is_file()
    again = load_peer_model(tmp_path / "clust3", "clust3")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert again.head_config == head
    x = torch.from_numpy(toy_split().images[:16]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():  # the clustering term went down during the 6 steps
        torch.manual_seed(0)
        fresh = _clust3_loss_plain(_model(), x)
        trained = _clust3_loss_plain(copy.deepcopy(again), x)
    assert float(trained) < float(fresh)
    out = create_method("clust3", again, steps=1)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_load_rejects_checkpoints_without_the_heads(tmp_path):
    from testtime.train.checkpoint import save_modules

    save_modules(tmp_path / "supervised", {"fc": torch.nn.Linear(2, 2)}, {"arch": "resnet8", "stage": "supervised"})
    with pytest.raises(ValueError, match=r"method 'clust3' needs .*'supervised'.*`testtime train clust3`"):
        load_peer_model(tmp_path / "supervised", "clust3")


def test_cli_train_clust3(tmp_path, monkeypatch, capsys, toy_split):
    """`testtime train clust3` reaches the stage (data loading replaced by the toy split)."""
    import testtime.train.pipeline as pipeline
    from testtime.cli import main

    def split():  # 32 px: the command corrupts the test split with the CIFAR parameters
        return toy_split(size=32)

    monkeypatch.setattr(pipeline, "load_data", lambda cfg: pipeline.PipelineData(split(), split(), split()))
    sets = ["supervised.epochs=1", "supervised.batch_size=16", "supervised.warmup_epochs=0"]
    argv = ["train", "clust3", "--run-dir", str(tmp_path), "--quiet", "--eval-clean"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    out = capsys.readouterr().out
    assert "clust3:" in out
    model = load_peer_model(tmp_path / "clust3", "clust3")
    assert model.head_config == ClusT3HeadConfig()  # the paper's heads
    # --eval-clean: the peer's own clean accuracy (eval mode, test-batch BN) on the test split
    from testtime.bench.evaluation import clean_accuracy

    want = (clean_accuracy(model, split()), clean_accuracy(model, split(), test_batch_bn=True))
    assert f"| clust3 | {want[0]:.2f} | {want[1]:.2f} |" in out


def test_bench_grid_builds_clust3_on_its_own_source_model(tmp_path, toy_split):
    """`testtime bench --methods clust3` gets the clust3 checkpoint (trained on demand), not the supervised one."""
    from testtime.bench.grid import _model_for
    from testtime.methods._layer_heads import LayerHeadModel

    cfg = config_from_dict(PipelineConfig, {"supervised": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
                                            "peer_heads": {"clust3": {"projectors": 1}}})
    model = _model_for("clust3", cfg, tmp_path, toy_split(), supervised=None, log=None)
    assert isinstance(model, LayerHeadModel) and model.head_config == ClusT3HeadConfig(projectors=1)
    assert (tmp_path / "clust3.safetensors").is_file()

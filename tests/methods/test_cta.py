"""CTA, CTA-C and the Y model at test time; alignment on a tiny real subset."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from testtime.losses import cross_encoder_alignment
from testtime.methods import create_method
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector


def _bundle(through=True, seed=0):
    torch.manual_seed(seed)
    m = create_model("resnet8", 4)
    return ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc, through_projector=through)


def _x(n=8, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, through", [("cta", True), ("cta-c", True), ("y-model", False)])
def test_only_g_and_pi_change_h_frozen(name, through):
    m = create_method(name, _bundle(through), steps=2, lr=1e-3)
    head = {k: v.clone() for k, v in m.model.head.state_dict().items()}
    enc = {k: v.clone() for k, v in m.model.encoder.state_dict().items()}
    pi = {k: v.clone() for k, v in m.model.projector.state_dict().items()}
    out = m(_x())
    assert out.shape == (8, 4) and torch.isfinite(out).all()
    assert all(torch.equal(v, m.model.head.state_dict()[k]) for k, v in head.items())
    assert any(not torch.equal(v, m.model.encoder.state_dict()[k]) for k, v in enc.items())
    assert any(not torch.equal(v, m.model.projector.state_dict()[k]) for k, v in pi.items())
    names = m.adapted_parameter_names()
    assert names and all(n.startswith(("model.encoder.", "model.projector.")) for n in names)


def test_episodic_reset_restores_weights_exactly():
    m = create_method("cta", _bundle(), steps=3, lr=1e-2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    first = m(_x())
    assert any(not torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    m.reset()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    again = m(_x())
    assert torch.equal(first, again)  # same views after reset: the generator is restored too


def test_batch_size_one_is_refused_clearly():
    m = create_method("cta", _bundle(), steps=1)
    with pytest.raises(ValueError, match="at least 2"):
        m(_x(1))


def test_non_finite_loss_skips_the_step_and_counts_it():
    m = create_method("cta", _bundle(), steps=2, lr=1e-3)
    before = {k: v.detach().clone() for k, v in m.model.named_parameters()}
    real = m.loss

    def nan_loss(x):
        loss, logits = real(x)
        return loss * float("nan"), logits

    m.loss = nan_loss  # type: ignore[method-assign]
    m(_x())
    assert m.nonfinite_steps == 2
    params = dict(m.model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in before.items())


def test_wrong_model_and_mismatched_projector_fail_clearly():
    with pytest.raises(ValueError, match="ProjectedClassifier"):
        create_method("cta", create_model("resnet8", 4))
    with pytest.raises(ValueError, match="through_projector"):
        create_method("cta", _bundle(through=False))
    m = create_model("resnet8", 4)
    with pytest.raises(ValueError, match="feature size"):
        ProjectedClassifier(m.encoder, projector(m.feature_dim, out_dim=32), m.fc)


def test_identity_projector_reproduces_the_supervised_model():
    torch.manual_seed(0)
    m = create_model("resnet8", 4).eval()
    b = ProjectedClassifier(copy.deepcopy(m.encoder), projector(m.feature_dim, identity=True), m.fc).eval()
    x = _x()
    torch.testing.assert_close(b(x), m(x))


# ----- alignment on a tiny real subset -------------------------------------------------------------
def _fashion_dir() -> Path | None:
    p = Path("/usr/share/datasets/fashion-mnist")
    return p if (p / "t10k-labels-idx1-ubyte.gz").is_file() or (p / "t10k-labels-idx1-ubyte").is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_fashion_dir() is None, reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_alignment_reduces_eq4_and_raises_accuracy_on_real_images():
    from testtime.data import load_dataset, subset_per_class
    from testtime.train import AlignObjective, AlignWeights, SupervisedObjective, TrainConfig, fit
    from testtime.train.pipeline import clean_accuracy

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    split = load_dataset("fashion-mnist", "train")
    train = subset_per_class(split, 60, seed=0)
    test = subset_per_class(load_dataset("fashion-mnist", "test"), 20, seed=0)
    torch.manual_seed(0)
    sup = create_model("resnet8", 10, in_chans=1)
    fit(
        SupervisedObjective(sup.encoder, sup.fc),
        train,
        TrainConfig(epochs=4, batch_size=60, lr=3e-3, warmup_epochs=0),
        None,
        log=None,
    )
    torch.manual_seed(1)
    g = create_model("resnet8", 10, in_chans=1).encoder  # an unrelated encoder and a random pi
    pi = projector(sup.feature_dim)
    bundle = ProjectedClassifier(g, pi, sup.fc)
    before = clean_accuracy(bundle, test)
    xs = torch.from_numpy(test.images[:120]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        sup.eval(), bundle.eval()
        eq4_before = float(cross_encoder_alignment(pi(g(xs)), pi(g(xs)), sup.encoder(xs), 0.5))
    res = fit(
        AlignObjective(g, pi, sup.encoder, sup.fc, AlignWeights(tau=0.5)),
        train,
        TrainConfig(epochs=5, batch_size=60, lr=3e-3, warmup_epochs=0, log_every=5),
        None,
        log=None,
    )
    after = clean_accuracy(bundle, test)
    with torch.no_grad():
        bundle.eval()
        eq4_after = float(cross_encoder_alignment(pi(g(xs)), pi(g(xs)), sup.encoder(xs), 0.5))
    assert res.history[-1]["align"] < res.history[0]["align"]
    assert eq4_after < eq4_before
    assert after > before + 10, (before, after, eq4_before, eq4_after)  # measured: 10% -> 30%
    assert np.isfinite(after)


def test_lineage_bn_moves_running_statistics_and_predicts_with_them():
    """bn="lineage": the SSL passes (train mode) move BN running statistics; the prediction uses them
    (eval mode), so it equals the eval-mode forward of the adapted weights; reset restores them."""
    from testtime.methods.cta import CTA

    torch.manual_seed(0)
    bundle = CTA.example_model(num_classes=4)
    x = torch.rand(6, 3, 16, 16)
    m = create_method("cta", copy.deepcopy(bundle), steps=2, lr=1e-3, bn="lineage", seed=0)
    bns = [b for b in m.model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    logits = m(x)
    assert any(not torch.equal(b.running_mean, r) for b, r in zip(bns, before))
    assert all(not b.training for b in bns)
    probe = copy.deepcopy(m.model).eval()
    torch.testing.assert_close(logits, probe(x))
    m.reset()
    assert all(torch.equal(b.running_mean, r) for b, r in zip(bns, before))
    with pytest.raises(ValueError, match="bn must be one of"):
        create_method("cta", copy.deepcopy(bundle), bn="nosuch")

"""TTT (Sun et al. 2020): one step against an independent computation, per-image reset, bad models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from testtime.methods import create_method
from testtime.methods.ttt import TTT
from testtime.models import create_model
from testtime.models.heads import with_aux_head


def _model(seed=0):
    torch.manual_seed(seed)
    return TTT.example_model(num_classes=3)


def _images(n, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _crop_flip_plain(x, g, pad=4):
    """RandomCrop(pad) + horizontal flip, one image at a time, drawing as crop_flip does (offsets, then flips)."""
    b = x.shape[0]
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
    flips = torch.rand(b, generator=g) < 0.5
    out = []
    for i in range(b):
        xp = F.pad(x[i], (pad, pad, pad, pad))
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        im = xp[:, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        out.append(im.flip(-1) if flips[i] else im)
    return torch.stack(out)


def test_one_step_matches_independent_computation():
    """Eq. 3 of TTT: SGD (no momentum, lr 1e-3) on the rotation CE of `copies` augmented rotated copies."""
    model = _model()
    ref = copy.deepcopy(model)
    x = _images(1)
    m = create_method("ttt", model, steps=1, copies=6, lr=0.05, seed=7)
    out = m(x)

    g = torch.Generator().manual_seed(7)
    copies = _crop_flip_plain(x.repeat(6, 1, 1, 1), g)
    labels = torch.randint(0, 4, (6,), generator=g)
    rotated = torch.stack([torch.rot90(copies[i], int(labels[i]), dims=(-2, -1)) for i in range(6)])
    ref.train()  # official: ssh.train() while adapting
    logits = ref.aux(ref.encoder(rotated))
    loss = F.cross_entropy(logits, labels)
    names = [n for n, _ in ref.named_parameters() if n.startswith(("encoder.", "aux."))]
    params = [p for n, p in ref.named_parameters() if n in names]
    grads = torch.autograd.grad(loss, params)
    expected = {n: p.detach() - 0.05 * gr for n, p, gr in zip(names, params, grads)}
    got = dict(m.model.named_parameters())
    for n in names:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["fc.weight"], ref.fc.weight)  # classifier untouched
    for (n, b), (_, rb) in zip(m.model.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, rb, msg=f"BN buffer {n}")  # running stats updated in train mode
    ref.eval()
    with torch.no_grad():
        ref_after = copy.deepcopy(ref)
        for n, p in ref_after.named_parameters():
            if n in expected:
                p.copy_(expected[n])
        torch.testing.assert_close(out, ref_after(x), rtol=1e-5, atol=1e-5)  # predicted after, eval mode


def test_per_image_restore_vs_online():
    """TTT restores the source weights before each image; TTT-Online keeps the updates."""
    x = _images(2, seed=3)
    source = _model().state_dict()
    m = create_method("ttt", _model(), steps=2, copies=4, lr=0.05)
    m(x)
    # reference: the same draws, with the source weights put back by hand before image 2
    r = create_method("ttt", _model(), steps=2, copies=4, lr=0.05, online=True)
    r(x[:1])
    r.model.load_state_dict(source)
    r.optimizer.state.clear()
    r(x[1:])
    for (n, p), (_, q) in zip(m.model.state_dict().items(), r.model.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)
    online = create_method("ttt", _model(), steps=2, copies=4, lr=0.05, online=True)
    online(x)
    assert not torch.equal(online.model.encoder.conv1.weight, m.model.encoder.conv1.weight)


def test_adaptation_lowers_the_rotation_loss_on_the_image():
    """It optimises: after TTT on one image, the rotation loss of its four rotations is lower.

    The image has an orientation (a vertical ramp and a red square at the top left); a noise
    image would not, and its rotations could not be told apart.
    """
    x = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(1, 3, 32, 32).clone()
    x[:, 0, 4:12, 4:12] = 1.0
    m = create_method("ttt", _model(), steps=10, copies=32, lr=0.05)
    xs = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # (4, 3, 32, 32)

    def rot_loss(model):
        with torch.no_grad():
            return float(F.cross_entropy(model.aux(model.encoder(xs)), torch.arange(4)))

    before = rot_loss(m.model)
    m(x)
    assert rot_loss(m.model) < before - 0.02


def test_plain_classifier_fails_before_any_work():
    plain = create_model("resnet8", num_classes=3)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match=r"method 'ttt' needs a model with a rotation-prediction head"):
        create_method("ttt", plain)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(ValueError, match=r"method 'ttt' needs an auxiliary 'rotation' head"):
        create_method("ttt", with_aux_head(create_model("resnet8", num_classes=3), "simclr"))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="copies must be >= 1"):
        create_method("ttt", _model(), copies=0)
    with pytest.raises(ValueError, match="unknown config field"):
        create_method("ttt", _model(), copy=3)


def test_non_square_images_fail_clearly():
    m = create_method("ttt", _model(), steps=1, copies=2)
    with pytest.raises(ValueError, match="square images"):
        m(torch.rand(1, 3, 32, 28))

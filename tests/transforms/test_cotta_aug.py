"""CoTTA's augmentation: seeded, in range, identity at degenerate ranges, and its pieces against
independent implementations (torch.rot90, kornia's hue, scipy's Gaussian filter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from testtime.transforms.cotta_aug import (
    CoTTAAugConfig,
    adjust_hue,
    affine,
    cotta_augment,
    gaussian_blur,
)

IDENTITY = CoTTAAugConfig(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0), gamma=(1, 1),
                          degrees=0, translate=0, scale=(1, 1), blur_sigma=(1e-3, 1e-3), hflip_p=0, noise_std=0)


def imgs(n=4, c=3, seed=0):
    return torch.rand(n, c, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_seeded_shape_and_range():
    x = imgs()
    a = cotta_augment(x, torch.Generator().manual_seed(1))
    b = cotta_augment(x, torch.Generator().manual_seed(1))
    c = cotta_augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    g1 = cotta_augment(imgs(c=1), torch.Generator().manual_seed(1))  # grey images work too
    assert g1.shape == (4, 1, 16, 16)


def test_identity_at_degenerate_ranges():
    x = imgs()
    torch.testing.assert_close(cotta_augment(x, torch.Generator().manual_seed(0), IDENTITY), x, atol=1e-5, rtol=0)


def test_shared_parameters_by_default_per_image_on_request():
    x = imgs(1).expand(4, -1, -1, -1).contiguous()  # four identical images
    shared = cotta_augment(x, torch.Generator().manual_seed(0), CoTTAAugConfig(noise_std=0))
    per = cotta_augment(x, torch.Generator().manual_seed(0), CoTTAAugConfig(noise_std=0, per_image=True))
    assert all(torch.equal(shared[0], shared[i]) for i in range(4))  # the official batch-level draw
    assert not torch.equal(per[0], per[1])


def test_affine_rotation_and_translation():
    x = imgs()
    one, zero = torch.ones(1), torch.zeros(1)
    torch.testing.assert_close(affine(x, torch.tensor([90.0]), zero, zero, one), torch.rot90(x, 1, (2, 3)),
                               atol=1e-5, rtol=0)  # counter-clockwise, like torchvision
    t = affine(x, zero, torch.tensor([2.0]), torch.tensor([-1.0]), one)
    torch.testing.assert_close(t[:, :, :-1, 2:], x[:, :, 1:, :-2], atol=1e-5, rtol=0)
    assert float(t[:, :, :, :2].abs().max()) < 1e-5  # zero fill where nothing maps
    s = affine(x, zero, zero, zero, torch.tensor([2.0]))  # zoom in x2 about the centre
    assert s.shape == x.shape and not torch.allclose(s, x)


def test_hue_matches_kornia():
    kornia = pytest.importorskip("kornia")
    x = imgs()
    for f in (-0.06, 0.03, 0.25):
        want = kornia.enhance.adjust_hue(x, f * 2 * math.pi)  # kornia takes radians
        torch.testing.assert_close(adjust_hue(x, torch.tensor([f])), want, atol=1e-5, rtol=0)


def test_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = imgs(2)
    sigma = 0.4
    got = gaussian_blur(x, 5, torch.tensor([sigma]))
    want = ndimage.gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="mirror",
                                   truncate=2.0 / sigma)  # radius 2 = kernel 5; 'mirror' = torch 'reflect'
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_bad_input_and_config():
    with pytest.raises(ValueError, match="images must be a float tensor"):
        cotta_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator())
    with pytest.raises(ValueError, match="CoTTAAugConfig.brightness"):
        CoTTAAugConfig(brightness=(1.4, 0.6))
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        CoTTAAugConfig(blur_kernel=4)

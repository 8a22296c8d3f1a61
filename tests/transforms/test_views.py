"""Transforms against kornia's torchvision-compatible ops, crop geometry and seeding."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.transforms import (
    CropFlipConfig,
    SimCLRViewsConfig,
    crop_flip,
    sample_crop_boxes,
    simclr_augment,
    simclr_views,
)
from testtime.transforms import functional as TF

kornia = pytest.importorskip("kornia")
from kornia import enhance as KE  # noqa: E402


def _images(b=6, c=3, s=16, seed=0):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_colour_ops_match_kornia_per_image_factors():
    x = _images()
    f = torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4])
    torch.testing.assert_close(TF.adjust_brightness(x, f), KE.adjust_brightness_accumulative(x, f))
    torch.testing.assert_close(TF.adjust_contrast(x, f), KE.adjust_contrast_with_mean_subtraction(x, f))
    torch.testing.assert_close(TF.adjust_saturation(x, f), KE.adjust_saturation_with_gray_subtraction(x, f))
    hue = torch.tensor([-0.1, -0.05, 0.0, 0.02, 0.07, 0.1])  # turns
    torch.testing.assert_close(TF.adjust_hue(x, hue), KE.adjust_hue(x, hue * 2 * math.pi), atol=1e-5, rtol=0)
    torch.testing.assert_close(TF.to_grayscale(x), kornia.color.rgb_to_grayscale(x))


def test_grey_images_pass_colour_ops():
    x = _images(c=1)
    f = torch.full((6,), 1.3)
    assert TF.adjust_saturation(x, f).equal(x)
    assert TF.adjust_hue(x, f * 0.1).equal(x)
    assert simclr_augment(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_resized_crop_is_crop_then_resize():
    x = _images(b=2, s=8)
    full = torch.tensor([[0, 0, 8, 8], [0, 0, 8, 8]])
    torch.testing.assert_close(TF.resized_crop(x, full, (8, 8)), x)  # whole image: identity
    box = torch.tensor([[2, 1, 4, 4], [0, 3, 4, 4]])
    out = TF.resized_crop(x, box, (4, 4))  # same size: an exact sub-image
    torch.testing.assert_close(out[0], x[0, :, 1:5, 2:6])
    torch.testing.assert_close(out[1], x[1, :, 3:7, 0:4])
    flipped = TF.resized_crop(x, box, (4, 4), torch.tensor([True, False]))
    torch.testing.assert_close(flipped[0], x[0, :, 1:5, 2:6].flip(-1))
    # upsampling a crop matches bilinear interpolation of the crop (align_corners=False)
    up = TF.resized_crop(x, box, (8, 8))
    ref = torch.nn.functional.interpolate(x[0:1, :, 1:5, 2:6], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[0:1], ref)


def test_crop_boxes_follow_random_resized_crop_rules():
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(4000, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), g)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 32).all() and (y0 + h <= 32).all()
    frac = w * h / 1024
    assert frac.min() >= 0.15 and frac.max() <= 1.0  # rounding lets the area dip slightly below 0.2
    r = w / h
    assert r.min() >= 0.6 and r.max() <= 1.6
    assert 0.5 < frac.mean() < 0.7  # E[U(0.2, 1)] = 0.6, pulled down by rejections of large crops


def test_same_seed_same_views_different_seed_different_views():
    x = _images(b=8, s=32)
    a1, a2 = simclr_views(x, torch.Generator().manual_seed(5))
    b1, b2 = simclr_views(x, torch.Generator().manual_seed(5))
    c1, _ = simclr_views(x, torch.Generator().manual_seed(6))
    assert a1.equal(b1) and a2.equal(b2)
    assert not a1.equal(c1) and not a1.equal(a2)
    assert a1.min() >= 0 and a1.max() <= 1


def test_per_image_parameters_are_independent():
    x = _images(b=1, s=32).expand(16, -1, -1, -1).contiguous()  # one image repeated
    v = simclr_augment(x, torch.Generator().manual_seed(0))
    distinct = {tuple(v[i].flatten()[:20].tolist()) for i in range(16)}
    assert len(distinct) > 12


def test_no_jitter_no_gray_config_is_pure_geometry():
    cfg = SimCLRViewsConfig(jitter_p=0.0, grayscale_p=0.0, flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    x = _images(b=4, s=16)
    torch.testing.assert_close(simclr_augment(x, torch.Generator().manual_seed(0), cfg), x)


def test_crop_flip_is_a_shifted_copy():
    x = _images(b=32, s=8)
    out = crop_flip(x, torch.Generator().manual_seed(0), CropFlipConfig(padding=2, flip_p=0.0))
    # the centre 4x4 of each output equals some shifted 4x4 of the input
    for i in range(32):
        found = any(
            out[i, :, 2:6, 2:6].equal(x[i, :, 2 + dy - 2 : 6 + dy - 2, 2 + dx - 2 : 6 + dx - 2])
            for dy in range(5)
            for dx in range(5)
        )
        assert found


def test_bad_input():
    with pytest.raises(ValueError, match="images"):
        simclr_augment(torch.rand(3, 32, 32), torch.Generator())
    with pytest.raises(ValueError, match="crop_scale"):
        SimCLRViewsConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="hue"):
        SimCLRViewsConfig(hue=0.7)

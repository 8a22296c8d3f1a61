"""MEMO's AugMix views: seeded, in range, and every operation against PIL (the official code's backend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from testtime.transforms.augmix import (
    AugMixConfig,
    apply_op,
    augmix_views,
    autocontrast,
    equalize,
    pil_affine,
    posterize,
    solarize,
)


def u8(seed=0, n=3, size=12, lo=0, hi=256):
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi, size=(n, size, size, 3), dtype=np.uint8)


def to_t(a):  # (N, H, W, C) uint8 -> (N, C, H, W) float
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255


def to_u8(t):
    return torch.round(t * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("lo,hi", [(0, 256), (40, 200), (90, 100)])
def test_autocontrast_and_equalize_match_pil(lo, hi):
    a = u8(lo=lo, hi=hi)
    a[1] = 77  # a constant image: both leave it unchanged
    want_ac = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(i))) for i in a])
    want_eq = np.stack([np.asarray(ImageOps.equalize(Image.fromarray(i))) for i in a])
    np.testing.assert_array_equal(to_u8(autocontrast(to_t(a))), want_ac)
    np.testing.assert_array_equal(to_u8(equalize(to_t(a))), want_eq)


def test_solarize_and_posterize_match_pil():
    a = u8()
    thr = torch.tensor([250, 231, 128])
    bits = torch.tensor([4, 2, 8])
    want_s = np.stack([np.asarray(ImageOps.solarize(Image.fromarray(i), int(t))) for i, t in zip(a, thr)])
    want_p = np.stack([np.asarray(ImageOps.posterize(Image.fromarray(i), int(b))) for i, b in zip(a, bits)])
    np.testing.assert_array_equal(to_u8(solarize(to_t(a), thr)), want_s)
    np.testing.assert_array_equal(to_u8(posterize(to_t(a), bits)), want_p)


def test_translation_matches_pil_and_shear_rotation_are_close():
    a = u8(size=16)
    x = to_t(a)
    coeffs = torch.tensor([[1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 1, -1], [1, 0.03, 0, 0, 1, 0]], dtype=torch.float64)
    got = to_u8(torch.round(pil_affine(x, coeffs, 128 / 255) * 255) / 255)
    for i in range(3):
        want = np.asarray(Image.fromarray(a[i]).transform((16, 16), Image.AFFINE, tuple(coeffs[i].tolist()),
                                                          resample=Image.BILINEAR, fillcolor=(128, 128, 128)))
        if i < 2:  # integer translations: exact, fill included
            np.testing.assert_array_equal(got[i], want)
        else:  # sub-pixel shear: same sampling inside the image (PIL rounds its fixed-point weights)
            diff = np.abs(got[i].astype(int) - want.astype(int))[2:-2, 2:-2]
            assert diff.max() <= 2
    rot = Image.fromarray(a[0]).rotate(2, resample=Image.BILINEAR, fillcolor=(128, 128, 128))
    from testtime.transforms.augmix import _rotation_coeffs

    mine = to_u8(torch.round(pil_affine(x[:1], _rotation_coeffs(torch.tensor([2.0]), 16, 16), 128 / 255) * 255) / 255)
    assert np.abs(mine[0].astype(int) - np.asarray(rot).astype(int))[2:-2, 2:-2].max() <= 2


def test_views_seeded_shape_range():
    img = to_t(u8(n=1, size=32))[0]
    a = augmix_views(img, 32, torch.Generator().manual_seed(0))
    b = augmix_views(img[None], 32, torch.Generator().manual_seed(0))
    c = augmix_views(img, 32, torch.Generator().manual_seed(1))
    assert a.shape == (32, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert len({v.numpy().tobytes() for v in a}) == 32  # 32 different views


def test_mixing_is_a_convex_combination():
    # An image that already spans 0..255 in every channel is a fixed point of autocontrast; with no
    # crop and no flip, every chain returns the image and so does any convex mix of them.
    a = u8(n=1, size=16)
    a[0, 0, 0] = 0
    a[0, 0, 1] = 255
    img = to_t(a)[0]
    cfg = AugMixConfig(ops=("autocontrast",), crop_padding=0, flip=False)
    views = augmix_views(img, 8, torch.Generator().manual_seed(0), cfg)
    torch.testing.assert_close(views, img.expand(8, -1, -1, -1), atol=1e-6, rtol=0)


def test_every_op_runs_and_bad_input_fails():
    x = to_t(u8(size=16))
    for name in AugMixConfig().ops:
        y = apply_op(name, x, AugMixConfig(), torch.Generator().manual_seed(0))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    with pytest.raises(ValueError, match="AugMixConfig.ops: unknown operation"):
        AugMixConfig(ops=("blur",))
    with pytest.raises(ValueError, match="augmix_views: image must be one float image"):
        augmix_views(torch.rand(2, 3, 8, 8), 4, torch.Generator())
    with pytest.raises(ValueError, match="augmix_views: n must be >= 1"):
        augmix_views(torch.rand(3, 8, 8), 0, torch.Generator())


def _pil_transform(img, coeffs):
    """The official call (zhangmarvin/memo ``utils/third_party.py``): BILINEAR, ``fillcolor=128``."""
    size = img.shape[1], img.shape[0]
    return np.asarray(Image.fromarray(img).transform(size, Image.AFFINE, tuple(coeffs), resample=Image.BILINEAR,
                                                     fillcolor=128)).astype(int)


def test_geometric_ops_truncate_and_fill_as_the_official_pil_calls():
    """PIL truncates the bilinear value to 8 bits and ``fillcolor=128`` on RGB is (128, 0, 0)."""
    a = u8(seed=5, n=4, size=16)
    coeffs = torch.tensor([[1, 0.1, 0.3, 0, 1, 0], [1, 0, 0, -0.07, 1, 0.4], [1, -0.03, 2, 0, 1, 0],
                           [1, 0, 0, 0, 1, -3]], dtype=torch.float64)
    got = (pil_affine(to_t(a), coeffs, AugMixConfig().fill) * 255).round().to(torch.int64).permute(0, 2, 3, 1).numpy()
    same = total = 0
    for i in range(len(a)):
        want = _pil_transform(a[i], coeffs[i].tolist())
        filled = (want == [128, 0, 0]).all(-1)
        assert filled.any(), "every case moves some points outside the image"
        np.testing.assert_array_equal(got[i][filled], want[filled])  # the official fill, exactly
        assert np.abs(got[i] - want).max() <= 1
        same += int((got[i] == want).sum())
        total += want.size
    assert same / total > 0.97  # rounding instead of truncating agrees on about half
    grey = u8(seed=6, n=1, size=16)[..., :1]  # a one-channel image: fillcolor=128 is grey 128
    g = (pil_affine(to_t(grey), coeffs[3:], AugMixConfig().fill) * 255).round().to(torch.int64)[0, 0].numpy()
    want = np.asarray(Image.fromarray(grey[0, ..., 0]).transform((16, 16), Image.AFFINE, tuple(coeffs[3].tolist()),
                                                                 resample=Image.BILINEAR, fillcolor=128))
    np.testing.assert_array_equal(g, want)


def test_rotation_truncates_as_pil():
    from testtime.transforms.augmix import _rotation_coeffs

    a = u8(seed=7, n=1, size=16)
    want = np.asarray(Image.fromarray(a[0]).rotate(2, resample=Image.BILINEAR, fillcolor=128)).astype(int)
    got = (pil_affine(to_t(a), _rotation_coeffs(torch.tensor([2.0]), 16, 16), AugMixConfig().fill) * 255)
    got = got.round().to(torch.int64).permute(0, 2, 3, 1).numpy()[0]
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.97


def test_bad_fill_fails_clearly():
    with pytest.raises(ValueError, match="AugMixConfig.fill"):
        AugMixConfig(fill=(2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="fill: 2 values for an image with 3 channels"):
        pil_affine(torch.zeros(1, 3, 4, 4), torch.tensor([[1.0, 0, 1, 0, 1, 0]]), (0.5, 0.5))

"""Cutout in the supervised augmentation (CropFlipConfig.cutout): geometry, seeding, draws, errors."""

from __future__ import annotations

import pytest
import torch

from testtime.train.trainer import TrainConfig
from testtime.transforms import CropFlipConfig, crop_flip


def _images(b: int = 16, s: int = 12) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.1  # no zeros


def test_cutout_zeroes_one_clipped_square_per_image():
    x = _images(b=64, s=12)
    plain = crop_flip(x, torch.Generator().manual_seed(3), CropFlipConfig(padding=0, flip_p=0.0))
    out = crop_flip(x, torch.Generator().manual_seed(3), CropFlipConfig(padding=0, flip_p=0.0, cutout=4))
    assert plain.equal(x)
    sizes = []
    for i in range(64):
        zero = (out[i] == 0).all(0)  # (H, W): zeroed in every channel
        assert ((out[i] == 0) == zero).all()  # the same square in every channel
        ys, xs = zero.nonzero(as_tuple=True)
        assert len(ys) > 0
        # a solid rectangle, at most 4 x 4, and the rest of the image untouched
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert h <= 4 and w <= 4 and len(ys) == h * w
        assert out[i][:, ~zero].equal(x[i][:, ~zero])
        sizes.append(h * w)
    assert max(sizes) == 16 and min(sizes) < 16  # full squares inside, clipped ones at the border


def test_cutout_zero_draws_nothing_and_keeps_the_plain_draws():
    x = _images()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = crop_flip(x, g1, CropFlipConfig(padding=2))
    b = crop_flip(x, g2, CropFlipConfig(padding=2, cutout=0))
    assert a.equal(b) and g1.get_state().equal(g2.get_state())
    # with Cutout the crop/flip part is the same; only the squares are added
    c = crop_flip(x, torch.Generator().manual_seed(5), CropFlipConfig(padding=2, cutout=3))
    assert ((c == a) | (c == 0)).all() and not c.equal(a)


def test_cutout_is_seeded():
    x = _images()
    cfg = CropFlipConfig(padding=2, cutout=5)
    def run(seed: int) -> torch.Tensor:
        return crop_flip(x, torch.Generator().manual_seed(seed), cfg)

    assert run(9).equal(run(9)) and not run(9).equal(run(8))


def test_train_config_carries_cutout_and_rejects_negatives():
    assert TrainConfig(crop_padding=2, cutout=8).augment() == CropFlipConfig(padding=2, cutout=8)
    assert TrainConfig().augment() == CropFlipConfig()
    with pytest.raises(ValueError, match="cutout"):
        TrainConfig(cutout=-1)
    with pytest.raises(ValueError, match="cutout"):
        CropFlipConfig(cutout=-2)

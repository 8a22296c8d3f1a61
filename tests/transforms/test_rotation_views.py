"""Rotation views of TTT: labels, directions, determinism, errors."""

from __future__ import annotations

import pytest
import torch

from testtime.transforms.rotation import rotate_by_labels, rotate_expand, rotate_random


def _ccw(img):
    """90 degrees counter-clockwise, by index: out[i][j] = img[j][W - 1 - i]."""
    c, h, w = img.shape
    out = torch.empty(c, w, h, dtype=img.dtype)
    for i in range(w):
        for j in range(h):
            out[:, i, j] = img[:, j, w - 1 - i]
    return out


def test_expand_gives_all_rotations_in_order():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    xs, y = rotate_expand(x)
    assert xs.shape == (8, 3, 4, 4)
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(2):
        ref = x[i]
        for k in range(4):
            assert torch.equal(xs[k * 2 + i], ref)
            ref = _ccw(ref)


def test_by_labels_rotates_each_image_by_its_label():
    x = torch.rand(5, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 1])
    out = rotate_by_labels(x, labels)
    for i, k in enumerate(labels.tolist()):
        ref = x[i]
        for _ in range(k):
            ref = _ccw(ref)
        assert torch.equal(out[i], ref)


def test_random_is_seeded_and_consistent_with_labels():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a, ya = rotate_random(x, torch.Generator().manual_seed(3))
    b, yb = rotate_random(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert torch.equal(a, rotate_by_labels(x, ya))
    assert ya.dtype == torch.int64 and set(ya.tolist()) <= {0, 1, 2, 3}


def test_non_square_images_fail_clearly():
    with pytest.raises(ValueError, match="square images"):
        rotate_expand(torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match="labels"):
        rotate_by_labels(torch.rand(2, 3, 4, 4), torch.tensor([0, 5]))

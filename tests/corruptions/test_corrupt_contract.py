"""Contract tests over every corruption x severity on real CIFAR-10 images."""

import numpy as np
import pytest
import torch

from testtime.corruptions import CORRUPTIONS, corrupt, list_corruptions

NAMES = list_corruptions()
RANDOM = [n for n in NAMES if CORRUPTIONS.meta(n)["random"]]


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range_uint8_and_float(cifar_images, name):
    x = cifar_images[:6]
    xf = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    for sev in range(1, 6):
        out = corrupt(x, name, sev, seed=1)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == x.shape
        assert not np.array_equal(out, x), f"{name} {sev} left the images unchanged"
        outf = corrupt(xf, name, sev, seed=1)
        assert outf.dtype == torch.float32 and outf.shape == xf.shape
        assert torch.isfinite(outf).all() and outf.min() >= 0 and outf.max() <= 1
        outt = corrupt(torch.from_numpy(x), name, sev, seed=1)
        assert isinstance(outt, torch.Tensor) and np.array_equal(outt.numpy(), out)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes(cifar_images, name):
    x = cifar_images[:4]
    a = corrupt(x, name, 5, seed=123)
    b = corrupt(x, name, 5, seed=torch.Generator().manual_seed(123))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", RANDOM)
def test_different_seeds_differ(cifar_images, name):
    x = cifar_images[:4]
    assert not np.array_equal(corrupt(x, name, 5, seed=0), corrupt(x, name, 5, seed=1))


def test_none_seed_follows_torch_global_seed(cifar_images):
    torch.manual_seed(7)
    a = corrupt(cifar_images[:2], "gaussian_noise", 3)
    torch.manual_seed(7)
    b = corrupt(cifar_images[:2], "gaussian_noise", 3)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_imagenet_parameters_at_64px(name):
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for sev in (1, 5):
        out = corrupt(x, name, sev, seed=0)  # 64 px selects the "tiny" set
        assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(out, x)


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_parameters_at_224px(name):
    x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    for sev in (1, 5):
        out = corrupt(x, name, sev, seed=0)
        assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(out, x)


@pytest.mark.parametrize("name", [n for n in NAMES if not CORRUPTIONS.meta(n)["random"]])
def test_float_and_uint8_paths_agree(cifar_images, name):
    # deterministic corruptions: the float result, truncated like the uint8 path, is within one
    # level of it (8-bit intermediates of Pillow / the generators exist only on the uint8 path)
    x = cifar_images[:6]
    xf = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    for sev in range(1, 6):
        a = corrupt(x, name, sev).astype(np.int16)
        b = np.floor(corrupt(xf, name, sev).permute(0, 2, 3, 1).numpy() * 255 + 1e-4).astype(np.int16)
        assert np.abs(a - b).max() <= 1, (name, sev, np.abs(a - b).max())

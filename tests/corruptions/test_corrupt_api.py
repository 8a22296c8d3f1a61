import numpy as np
import pytest
import torch

from testtime.corruptions import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    PARAMS,
    corrupt,
    list_corruptions,
)

PUBLISHED_ORDER = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]  # fmt: skip


def test_listing_order_and_counts():
    assert list(BENCHMARK_CORRUPTIONS) == PUBLISHED_ORDER
    assert list(EXTRA_CORRUPTIONS) == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert list_corruptions() == PUBLISHED_ORDER + list(EXTRA_CORRUPTIONS)
    assert list_corruptions("benchmark") == PUBLISHED_ORDER
    assert list_corruptions("extra") == list(EXTRA_CORRUPTIONS)
    with pytest.raises(ValueError, match="kind"):
        list_corruptions("weather")


def test_every_listed_name_is_registered_with_all_parameter_sets():
    assert sorted(CORRUPTIONS.names()) == sorted(list_corruptions())
    for name in list_corruptions():
        assert set(PARAMS[name]) == {"cifar", "tiny", "imagenet"}
        assert all(len(v) == 5 for v in PARAMS[name].values())


def test_published_cifar_values():
    assert PARAMS["gaussian_noise"]["cifar"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert PARAMS["shot_noise"]["cifar"] == (500, 250, 100, 75, 50)
    assert PARAMS["jpeg_compression"]["cifar"] == (80, 65, 58, 50, 40)
    assert PARAMS["motion_blur"]["cifar"] == ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))


@pytest.fixture
def tiny():
    return np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def test_unknown_name_lists_valid(tiny):
    with pytest.raises(KeyError, match="name: unknown corruption 'fogg'.*gaussian_noise.*saturate"):
        corrupt(tiny, "fogg", 1)


@pytest.mark.parametrize("sev", [0, 6, 2.0, True, "3"])
def test_bad_severity(tiny, sev):
    with pytest.raises(ValueError, match="severity"):
        corrupt(tiny, "fog", sev)


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="images: dtype"):
        corrupt(tiny.astype(np.int32), "fog", 1)
    with pytest.raises(ValueError, match="images: uint8 images must be"):
        corrupt(tiny[..., :2], "fog", 1)
    with pytest.raises(ValueError, match="images: uint8 images must be"):
        corrupt(tiny[0], "fog", 1)
    x = torch.rand(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images: float input contains NaN"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match=r"images: float images must lie in \[0, 1\]"):
        corrupt(torch.rand(2, 3, 32, 32) * 2, "fog", 1)
    with pytest.raises(ValueError, match="images: float images must be"):
        corrupt(torch.rand(2, 32, 32, 3), "fog", 1)
    with pytest.raises(ValueError, match="seed"):
        corrupt(tiny, "fog", 1, seed="zero")


def test_parameter_set_selection(tiny):
    with pytest.raises(ValueError, match="params: no published parameter set for 28x28"):
        corrupt(np.zeros((1, 28, 28, 1), np.uint8), "contrast", 1)
    out = corrupt(np.zeros((1, 28, 28, 1), np.uint8), "contrast", 1, params="cifar")
    assert out.shape == (1, 28, 28, 1)
    with pytest.raises(ValueError, match="params: unknown parameter set 'mnist'; valid: cifar, tiny, imagenet"):
        corrupt(tiny, "contrast", 1, params="mnist")
    with pytest.raises(ValueError, match="images: 32x32 is too small for parameter set 'imagenet'"):
        corrupt(tiny, "contrast", 1, params="imagenet")


def test_grey_images(tiny):
    grey = tiny[..., :1]
    for name in ("brightness", "frost", "gaussian_noise", "snow"):
        out = corrupt(grey, name, 3, seed=0)
        assert out.shape == grey.shape and out.dtype == np.uint8
        rgb = corrupt(grey, name, 3, seed=0, grey_as_rgb=True)
        assert rgb.shape == (2, 32, 32, 3)


def test_empty_batch():
    out = corrupt(np.zeros((0, 32, 32, 3), np.uint8), "fog", 2, seed=0)
    assert out.shape == (0, 32, 32, 3)


def test_missing_frost_files_say_how_to_install(monkeypatch, tiny):
    import importlib.metadata

    from testtime.corruptions import frost

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    frost.frost_textures.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps imagecorruptions==1\.1\.2"):
            corrupt(tiny, "frost", 1, seed=0)
    finally:
        frost.frost_textures.cache_clear()

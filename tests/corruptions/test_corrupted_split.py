import numpy as np
import pytest
import torch

from testtime.corruptions import CorruptedSplit, corrupt
from testtime.corruptions.dataset import chunk_seed
from testtime.data.split import ImageSplit


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    return ImageSplit(images, rng.integers(0, 10, 23).astype(np.int64), tuple("abcdefghij"), "toy/test")


def test_batches_do_not_depend_on_batch_size(split):
    cs = CorruptedSplit(split, "gaussian_noise", 5, seed=3, chunk_size=10)
    a = torch.cat([x for x, _ in cs.batches(4)])
    b = torch.cat([x for x, _ in CorruptedSplit(split, "gaussian_noise", 5, seed=3, chunk_size=10).batches(23)])
    assert a.dtype == torch.uint8 and a.shape == (23, 32, 32, 3)
    assert torch.equal(a, b)
    labels = torch.cat([y for _, y in cs.batches(7)])
    assert torch.equal(labels, torch.from_numpy(split.labels))
    # chunk k is corrupt(images of chunk k) with its derived seed
    g = torch.Generator().manual_seed(chunk_seed(3, "gaussian_noise", 5, 1))
    assert np.array_equal(a[10:20].numpy(), corrupt(split.images[10:20], "gaussian_noise", 5, seed=g))


def test_float_batches_and_materialize(split):
    cs = CorruptedSplit(split, "fog", 2, seed=0, chunk_size=8)
    xs, ys = next(iter(cs.batches(5, as_float=True)))
    assert xs.dtype == torch.float32 and xs.shape == (5, 3, 32, 32) and ys.dtype == torch.int64
    m = cs.materialize()
    assert isinstance(m, ImageSplit) and m.name == "toy/test-c/fog/2" and m.meta["severity"] == 2
    torch.testing.assert_close(xs, torch.from_numpy(m.images[:5]).permute(0, 3, 1, 2).float() / 255)
    assert not np.array_equal(m.images, split.images)


def test_seeds_and_severities_change_the_bytes(split):
    a = CorruptedSplit(split, "shot_noise", 3, seed=0).materialize().images
    assert not np.array_equal(a, CorruptedSplit(split, "shot_noise", 3, seed=1).materialize().images)
    assert not np.array_equal(a, CorruptedSplit(split, "shot_noise", 4, seed=0).materialize().images)


def test_bad_arguments_fail_early(split):
    with pytest.raises(KeyError, match="valid: gaussian_noise"):
        CorruptedSplit(split, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        CorruptedSplit(split, "fog", 9)
    with pytest.raises(ValueError, match="chunk_size"):
        CorruptedSplit(split, "fog", 1, chunk_size=0)
    with pytest.raises(ValueError, match="params: no published parameter set for 28x28"):
        CorruptedSplit(split.take(np.arange(2)).__class__(
            np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int64), ("a",), "grey"), "fog", 1)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size"):
        next(CorruptedSplit(split, "fog", 1).batches(0))


def test_thread_setting_is_restored(split):
    before = torch.get_num_threads()
    CorruptedSplit(split, "motion_blur", 1, threads=1).chunk(0)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        CorruptedSplit(split, "fog", 1, threads=0)

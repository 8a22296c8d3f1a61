"""Fixtures of the data tests: a private cache and data home, the real data sets when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """Every test gets its own cache and an empty $TESTTIME_DATA: nothing is written elsewhere."""
    monkeypatch.setenv("TESTTIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TESTTIME_DATA", str(tmp_path / "data-home"))
    return tmp_path


def cifar10_jpeg_root() -> Path | None:
    env = os.environ.get("TESTTIME_CIFAR10_JPEG")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "cifar10-jpeg"]:
        if (p / "test").is_dir():
            return p
    return None


@pytest.fixture
def cifar10_jpeg() -> Path:
    """The CIFAR-10 JPEG copy ($TESTTIME_CIFAR10_JPEG or <repo>/../shared/data/cifar10-jpeg), else skip."""
    root = cifar10_jpeg_root()
    if root is None:
        pytest.skip("CIFAR-10 JPEG copy not found ($TESTTIME_CIFAR10_JPEG or ../shared/data/cifar10-jpeg)")
    return root


@pytest.fixture
def fashion_mnist_dir() -> Path:
    """The Debian package's Fashion-MNIST folder, else skip."""
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
    return FASHION_MNIST

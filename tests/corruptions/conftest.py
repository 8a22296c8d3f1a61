import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def cifar_jpeg_root() -> Path | None:
    env = os.environ.get("TESTTIME_CIFAR10_JPEG")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "cifar10-jpeg"]:
        if (cand / "test").is_dir():
            return cand
    return None


def load_cifar_jpeg(per_class: int, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    root = cifar_jpeg_root()
    if root is None:
        pytest.skip("CIFAR-10 JPEG copy not found (set TESTTIME_CIFAR10_JPEG)")
    images, labels = [], []
    for label, cls in enumerate(sorted(p.name for p in (root / split).iterdir() if p.is_dir())):
        for f in sorted((root / split / cls).glob("*.jpg"))[:per_class]:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


@pytest.fixture(scope="session")
def cifar_images() -> np.ndarray:
    """20 real CIFAR-10 test images (2 per class), uint8 (20, 32, 32, 3)."""
    return load_cifar_jpeg(2)[0]


@pytest.fixture(scope="session")
def cifar_images_40() -> np.ndarray:
    """40 real CIFAR-10 test images (4 per class), uint8 (40, 32, 32, 3)."""
    return load_cifar_jpeg(4)[0]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Corruptions run many small tensor ops: on a shared CPU, intra-op threads make them several
    times slower (docs/performance.md), so these tests use one thread and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""The frost photographs of the original release, read from the ``imagecorruptions`` wheel's data.

The PyPI package ``imagecorruptions`` (Apache-2.0) ships the six frost images of
``hendrycks/robustness`` as package data. Its Python code is never imported (it fails on
numpy 2); the files are located through ``importlib.metadata``.

Example::

    >>> textures = frost_textures(0.2)   # the 5 textures the generators draw from, resized
    >>> textures[0].shape                # (H, W, 3) uint8 tensor
    torch.Size([120, 180, 3])
"""

from __future__ import annotations

import importlib.metadata
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
#: The generators draw ``np.random.randint(5)``: only the first five photographs are ever used.
FROST_USED = 5
INSTALL_HINT = "pip install --no-deps imagecorruptions==1.1.2"


def frost_dir() -> Path:
    """The folder holding the frost photographs.

    Raises:
        FileNotFoundError: the ``imagecorruptions`` wheel (its data) is not installed.
    """
    try:
        dist = importlib.metadata.distribution("imagecorruptions")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"frost: the frost photographs come from the imagecorruptions wheel, which is not installed; "
            f"install its data with: {INSTALL_HINT}"
        ) from None
    for f in dist.files or ():
        if f.name == FROST_FILES[0] and f.parent.name == "frost":
            path = Path(str(dist.locate_file(f))).parent
            if all((path / name).is_file() for name in FROST_FILES[:FROST_USED]):
                return path
    raise FileNotFoundError(
        f"frost: imagecorruptions is installed but its frost images are missing; run: {INSTALL_HINT}"
    )


def _resize_linear(img: np.ndarray, scale: float) -> np.ndarray:
    """OpenCV ``resize(img, (0, 0), fx=scale, fy=scale)`` (INTER_LINEAR, half-pixel centres, no anti-alias)."""
    if scale == 1.0:
        return img
    h, w = img.shape[:2]
    oh, ow = int(round(h * scale)), int(round(w * scale))
    t = torch.from_numpy(img).permute(2, 0, 1)[None].to(torch.float64)  # (1, 3, H, W)
    ys = ((torch.arange(oh, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(min=0)
    xs = ((torch.arange(ow, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(min=0)
    y0, x0 = ys.floor().long().clamp(max=h - 1), xs.floor().long().clamp(max=w - 1)
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    wy, wx = (ys - y0).view(1, 1, -1, 1), (xs - x0).view(1, 1, 1, -1)
    top = t[:, :, y0][:, :, :, x0] * (1 - wx) + t[:, :, y0][:, :, :, x1] * wx
    bot = t[:, :, y1][:, :, :, x0] * (1 - wx) + t[:, :, y1][:, :, :, x1] * wx
    out = torch.round(top * (1 - wy) + bot * wy).clamp(0, 255).to(torch.uint8)
    return out[0].permute(1, 2, 0).numpy()


@lru_cache(maxsize=8)
def frost_textures(scale: float) -> tuple[torch.Tensor, ...]:
    """The five frost textures the generators use, as RGB uint8 (H, W, 3), resized by ``scale``."""
    folder = frost_dir()
    out = []
    for name in FROST_FILES[:FROST_USED]:
        with Image.open(folder / name) as im:
            rgb = np.array(im.convert("RGB"))
        out.append(torch.from_numpy(np.ascontiguousarray(_resize_linear(rgb, scale))))
    return tuple(out)


def min_texture_side(scale: float) -> int:
    """The smallest side over the used textures after resizing (the largest image frost can cover)."""
    folder = frost_dir()
    sides = []
    for name in FROST_FILES[:FROST_USED]:
        with Image.open(folder / name) as im:
            sides.extend(int(round(s * scale)) if scale != 1.0 else s for s in im.size)
    return min(sides) if sides else math.inf

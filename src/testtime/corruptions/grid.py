"""A picture of one image under every corruption and severity.

Example::

    >>> img = draw_grid(split.images[0], seed=0)      # PIL image: rows = corruptions, cols = clean, 1..5
    >>> img.save("grid.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from testtime.corruptions.core import corrupt, list_corruptions


def draw_grid(
    image: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    params: str | None = None,
    tile: int = 96,
) -> Image.Image:
    """Rows: corruptions (published order); columns: the clean image then severities 1..5.

    Args:
        image: uint8 (H, W, C), C in {1, 3}.
        names: corruptions to draw (default: all 19).
        seed: random seed of every cell.
        params: parameter set (default: from the image size).
        tile: shown size of each cell in pixels (nearest-neighbour upscaling, so pixels stay visible).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image: expected uint8 (H, W, C) with C in {{1, 3}}, got {getattr(image, 'shape', image)}")
    names = list(names) if names is not None else list_corruptions()
    h, w, _ = image.shape
    scale = max(1, tile // max(h, w))
    th, tw = h * scale, w * scale
    label_w, head_h, pad = 130, 20, 2
    canvas = Image.new("RGB", (label_w + 6 * (tw + pad), head_h + len(names) * (th + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, head in enumerate(["clean", "1", "2", "3", "4", "5"]):
        draw.text((label_w + j * (tw + pad) + tw // 2 - 10, 4), head, fill="black")

    def cell(arr: np.ndarray) -> Image.Image:
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
        return im.resize((tw, th), Image.NEAREST)

    batch = image[None]  # (1, H, W, C)
    for i, name in enumerate(names):
        y = head_h + i * (th + pad)
        draw.text((4, y + th // 2 - 6), name, fill="black")
        canvas.paste(cell(image), (label_w, y))
        for s in range(1, 6):
            out = corrupt(batch, name, s, seed=seed, params=params)[0]
            canvas.paste(cell(out), (label_w + s * (tw + pad), y))
    return canvas

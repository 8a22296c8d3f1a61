"""On-the-fly corrupted splits: corrupt a clean split chunk by chunk while evaluating.

The split is cut into fixed chunks of ``chunk_size`` images; chunk k is corrupted with a seed
derived from (seed, corruption, severity, k). Image i therefore gets the same bytes whatever
batch size the caller iterates with, and the same bytes as the files written by
:func:`testtime.corruptions.materialize.materialize` with the same seed and chunk size.

Example::

    >>> cs = CorruptedSplit(split, "gaussian_noise", 5, seed=0)
    >>> for images, labels in cs.batches(200, as_float=True, device="cpu"):
    ...     logits = model(images)              # images: float (B, C, H, W) in [0, 1]
    >>> fog5 = CorruptedSplit(split, "fog", 5, seed=0).materialize()   # an ImageSplit
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import torch

from testtime.corruptions.core import check_feasible, check_name, check_severity, corrupt
from testtime.corruptions.params import PARAM_SETS, resolve_params
from testtime.data.split import ImageSplit

DEFAULT_CHUNK = 1000


def chunk_seed(seed: int, name: str, severity: int, chunk: int) -> int:
    """The seed of one chunk: a SeedSequence hash of (seed, crc32(name), severity, chunk)."""
    ss = np.random.SeedSequence([int(seed) % 2**63, zlib.crc32(name.encode()), int(severity), int(chunk)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class CorruptedSplit:
    """A clean :class:`ImageSplit` seen through one corruption at one severity, corrupted lazily.

    Args:
        split: the clean split (uint8 (N, H, W, C)).
        name: a corruption name (:func:`testtime.corruptions.list_corruptions`).
        severity: 1..5.
        seed: int; fixes every random draw (per chunk, see :func:`chunk_seed`).
        params: parameter set (default: chosen from the image size).
        chunk_size: images corrupted per call (the unit of randomness; keep it fixed to
            reproduce files written with it).
        device: where the corruption runs (``"cpu"``, ``"cuda"``, ...).
        grey_as_rgb: repeat 1-channel images to 3 channels.
        threads: torch intra-op threads while corrupting (restored afterwards); ``None`` leaves
            the setting alone. Default 1: the corruptions run many small tensor operations, and
            on a shared, busy CPU two threads made some of them 3 to 10x slower
            (docs/performance.md).
    """

    def __init__(
        self,
        split: ImageSplit,
        name: str,
        severity: int,
        seed: int = 0,
        *,
        params: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        device: str | torch.device = "cpu",
        grey_as_rgb: bool = False,
        threads: int | None = 1,
    ) -> None:
        if not isinstance(split, ImageSplit):
            raise ValueError(f"split: expected an ImageSplit, got {type(split).__name__}")
        self.name = check_name(name)
        self.severity = check_severity(severity)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed: expected an int, got {type(seed).__name__}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
        h, w = split.image_size
        if params is not None and params not in PARAM_SETS:
            raise ValueError(f"params: unknown parameter set {params!r}; valid: {', '.join(PARAM_SETS)}")
        self.params = resolve_params(params, h, w)
        check_feasible(self.name, self.params, h, w)
        self.split = split
        self.seed = int(seed)
        self.chunk_size = chunk_size
        self.device = torch.device(device)
        self.grey_as_rgb = grey_as_rgb
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {threads!r}")
        self.threads = threads
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    @property
    def num_chunks(self) -> int:
        return -(-len(self.split) // self.chunk_size)

    def chunk(self, k: int) -> np.ndarray:
        """Corrupted images of chunk ``k``: uint8 (n, H, W, C) (the last one may be shorter)."""
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        lo, hi = k * self.chunk_size, min((k + 1) * self.chunk_size, len(self.split))
        x = torch.from_numpy(self.split.images[lo:hi]).to(self.device)
        g = torch.Generator(device="cpu").manual_seed(chunk_seed(self.seed, self.name, self.severity, k))
        before = torch.get_num_threads()
        if self.threads is not None and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            out = corrupt(x, self.name, self.severity, seed=g, params=self.params, grey_as_rgb=self.grey_as_rgb)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        arr = out.cpu().numpy()
        self._cache = (k, arr)
        return arr

    def batches(
        self, batch_size: int, *, as_float: bool = False, device: str | torch.device | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) in split order, ``batch_size`` at a time (the last may be short).

        images: uint8 (B, H, W, C), or with ``as_float`` float32 (B, C, H, W) in [0, 1];
        labels: int64 (B,). Both on ``device`` (default: the corruption device).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        dev = self.device if device is None else torch.device(device)
        n = len(self.split)
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            parts = []
            pos = lo
            while pos < hi:
                k = pos // self.chunk_size
                c0 = k * self.chunk_size
                take = min(hi, c0 + self.chunk_size) - pos
                parts.append(self.chunk(k)[pos - c0 : pos - c0 + take])
                pos += take
            imgs = torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0]).to(dev)
            if as_float:
                imgs = imgs.permute(0, 3, 1, 2).to(torch.float32) / 255  # (B, C, H, W)
            yield imgs, torch.from_numpy(self.split.labels[lo:hi]).to(dev)

    def materialize(self) -> ImageSplit:
        """All corrupted images at once, as an :class:`ImageSplit` named ``<split>-c/<name>/<severity>``."""
        images = (
            np.concatenate([self.chunk(k) for k in range(self.num_chunks)])
            if len(self.split)
            else (self.split.images.copy())
        )
        meta = dict(self.split.meta)
        meta.update(
            corruption=self.name, severity=self.severity, seed=self.seed, params=self.params, chunk_size=self.chunk_size
        )
        return ImageSplit(
            images,
            self.split.labels.copy(),
            self.split.classes,
            f"{self.split.name}-c/{self.name}/{self.severity}",
            meta,
        )

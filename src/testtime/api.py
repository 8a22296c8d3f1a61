"""Deployment API: wrap a trained CTA bundle (or any testtime method) into an object that takes a
batch of images and returns predictions while adapting.

Example::

    from testtime.api import Adapter, load_bundle
    bundle = load_bundle("runs/cifar10-cpu/cta")            # h(pi(g(.))); f is not in the file
    adapter = Adapter(bundle, method="cta", steps=20, lr=1e-6)
    preds = adapter(images)      # uint8 (B, H, W, C) numpy or float (B, C, H, W) in [0, 1]; B >= 2
    adapter.reset()              # back to the aligned weights

With ``episodic=True`` (the default, the CTA paper's protocol) every call starts from the aligned
weights; with ``episodic=False`` adaptation accumulates over calls until :meth:`Adapter.reset`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from testtime.methods import create_method
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector
from testtime.train.checkpoint import load_modules, read_meta


def load_bundle(path: str | os.PathLike) -> ProjectedClassifier:
    """Rebuild the test-time bundle ``h(pi(g(.)))`` saved by the alignment stage (``<run_dir>/cta``).

    The file holds g, pi and h only; the supervised encoder f is never read. The sidecar's sha256 is
    checked before any tensor is parsed; a checkpoint of another architecture fails clearly.
    """
    meta = read_meta(path)["meta"]
    for key in ("arch", "num_classes", "in_chans", "feature_dim"):
        if key not in meta:
            raise ValueError(f"{path}: not a CTA bundle (its sidecar has no {key!r}); use <run_dir>/cta")
    _check_bundle_meta(path, meta)
    base = create_model(meta["arch"], int(meta["num_classes"]), in_chans=int(meta["in_chans"]))
    bundle = ProjectedClassifier(
        base.encoder,
        projector(int(meta["feature_dim"])),
        base.fc,
        through_projector=bool(meta.get("through_projector", True)),
    )
    load_modules(path, {"encoder": bundle.encoder, "projector": bundle.projector, "head": bundle.head})
    return bundle.eval()


def _check_bundle_meta(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """The sidecar's sizes are used to build the model before its weights are read: bound them first,
    so a tampered sidecar cannot ask for a huge allocation (the weights' sha256 is checked later)."""
    from testtime.models import list_models

    if meta["arch"] not in list_models():
        raise ValueError(f"{path}: unknown arch {meta['arch']!r} in the sidecar; valid: {', '.join(list_models())}")
    for key, lo, hi in (("num_classes", 2, 100_000), ("in_chans", 1, 3), ("feature_dim", 1, 65_536)):
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{path}: the sidecar's {key} must be an integer in [{lo}, {hi}], got {v!r}")


class Adapter:
    """Predict while adapting: ``adapter(images) -> labels (B,)``; :meth:`reset` restores the start.

    Args:
        model: a bundle (``ProjectedClassifier`` for cta / cta-c / y-model) or a classifier for the
            other methods.
        method: a registered method name (``testtime.methods.list_methods()``).
        episodic: reset before every call (CTA's protocol) instead of adapting continually.
        device: ``"cpu"``, ``"cuda"``, ...
        on_nonfinite: ``"error"`` (a batch with a NaN / Inf value fails in one line) or ``"drop"`` (those
            images are left out, predicted -1 and listed in :attr:`last_dropped`).
        **config: overrides of the method's config (``steps``, ``lr``, ``tau``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "cta",
        *,
        episodic: bool = True,
        device: str | torch.device = "cpu",
        on_nonfinite: str = "error",
        **config: Any,
    ) -> None:
        from testtime.bench.grid import method_config
        from testtime.train.pipeline import check_device

        if on_nonfinite not in ("error", "drop"):
            raise ValueError(f"on_nonfinite must be 'error' or 'drop', got {on_nonfinite!r}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch nn.Module, got {type(model).__name__}")
        check_device("device", str(device))
        self.device = torch.device(device)
        self.method = create_method(method, model, config=method_config(method, config)).to(self.device)
        self.episodic = episodic
        self.on_nonfinite = on_nonfinite
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_chans = conv.in_channels if conv is not None else None
        self.dtype = next((p.dtype for p in model.parameters()), torch.float32)
        self.last_dropped: list[int] = []  # rows of the last batch dropped as non-finite (on_nonfinite="drop")
        self.dropped_images = 0

    def _to_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"images: a numpy batch must be uint8 (B, H, W, C), got {images.dtype} {images.shape}")
            self._check_channels(images.shape[3], "(B, H, W, C)")
            return torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).to(self.dtype).div(255.0)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError("images: expected uint8 numpy (B, H, W, C) or a float tensor (B, C, H, W) in [0, 1]")
        self._check_channels(images.shape[1], "(B, C, H, W)")
        finite = images[torch.isfinite(images)]
        if finite.numel() and (float(finite.min()) < -1e-6 or float(finite.max()) > 1 + 1e-6):
            raise ValueError(
                f"images: float values must lie in [0, 1], got [{float(finite.min()):.4g}, {float(finite.max()):.4g}]; "
                "divide uint8 images by 255"
            )
        return images.to(self.device, self.dtype)

    def _check_channels(self, c: int, layout: str) -> None:
        if self.in_chans is not None and c != self.in_chans:
            raise ValueError(f"images: {c} channels {layout} but the model takes {self.in_chans}")

    def logits(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Adapt on the batch and return its logits (B, K) (predicted after the update for CTA).

        Non-finite images fail (``on_nonfinite="error"``) or are left out of the batch, their rows of
        logits NaN and their indices in :attr:`last_dropped` (``on_nonfinite="drop"``).
        """
        x = self._to_batch(images)
        ok = torch.isfinite(x).flatten(1).all(1)  # (B,)
        self.last_dropped = torch.nonzero(~ok).flatten().tolist() if self.on_nonfinite == "drop" else []
        if self.last_dropped:
            self.dropped_images += len(self.last_dropped)
            if not bool(ok.any()):
                raise ValueError("images: every image of the batch has NaN or Inf values")
            x = x[ok]
        if self.episodic:
            self.method.reset()
        out = self.method.step(x)
        if not self.last_dropped:
            return out
        full = out.new_full((len(ok), out.shape[1]), float("nan"))
        full[ok.to(out.device)] = out
        return full

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Predicted labels (B,) int64 (-1 for an image dropped as non-finite)."""
        logits = self.logits(images)
        pred = logits.argmax(1)
        if self.last_dropped:
            pred[torch.isnan(logits).all(1)] = -1
        return pred

    def reset(self) -> None:
        """Back to the weights (and optimiser / random state) the adapter started from."""
        self.method.reset()

    @property
    def nonfinite_steps(self) -> int:
        """Updates skipped because the loss or the weights were not finite."""
        return int(self.method.nonfinite_steps)

"""Shared argument checks for the loss functions (clear one-line errors)."""

from __future__ import annotations

import torch


def check_embeddings(name: str, x: torch.Tensor, *, min_batch: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating (B, D) tensor with B >= ``min_batch``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor (B, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (B, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.shape[0] < min_batch:
        raise ValueError(
            f"{name}: batch of {x.shape[0]} image(s); this loss needs at least {min_batch} "
            "(contrastive losses need negatives: use batch size >= 2)"
        )


def check_same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape (B, D), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
            " (encoders of different output sizes cannot be aligned: give pi an output size equal to f's)"
        )


def check_temperature(tau: float) -> None:
    if not (isinstance(tau, (int, float)) and tau > 0 and tau == tau):
        raise ValueError(f"tau: the temperature must be a positive number, got {tau!r}")

"""TTT-Linear and TTT-MLP sequence-modelling layers (Sun et al., 2024, "Learning to (Learn at Test Time)").

A TTT layer's hidden state is the weight W of a small per-head model f (a linear map for TTT-Linear,
a two-layer GELU MLP with 4x hidden width for TTT-MLP). At every position it takes one gradient step
on the self-supervised loss ``1/2 ||LN(f(K; W)) - (V - K)||^2`` and outputs ``Q + LN(f(Q; W_t))``
(Sec. 2.3, Eq. 5; the inner loop is in :mod:`testtime.layers.forms`). Around the inner loop, as in the
official PyTorch code (test-time-training/ttt-lm-pytorch ``ttt.py``):

* Q, K, V: bias-free linear projections of the input to (B, H, L, d), d = width / num_heads;
* inner learning rate per head and token: ``eta = base_lr * sigmoid(x @ w_lr[h] + b_lr[h]) / d``
  (Sec. 2.7); base_lr 1.0 for TTT-Linear and 0.1 for TTT-MLP (the official JAX scripts);
* initial inner weights normal(0, 0.02), biases zero; w_lr normal(0, 0.02), b_lr zero;
* a LayerNorm over the width (eps 1e-6) and a bias-free output projection after the heads are merged.

Options: ``position_scale`` "none" (the paper's Eq. 6; default), "fixed" (the official code's
``token_idx`` 1/(i+1) for position i of a mini-batch) or "learnable" (1/(i+1) plus a learnt offset,
clamped at 0, as the official code does). Left out: the official RoPE on Q/K (applied there with
positions taken modulo the mini-batch size), the Mamba-backbone options (shared Q/K with causal
convolutions, gating, pre-convolution) and gradient checkpointing of the scan.

Decoding: pass a :class:`TTTCache`; the layer continues from the cached inner weights W_{t0} and the
partial gradient sum of the current mini-batch, so feeding a sequence in pieces of any size gives the
same outputs as one call. Pieces shorter than a mini-batch use the primal form unless ``form`` says
otherwise (the official code's choice; the dual form handles them too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from testtime.layers.forms import FORMS, InnerState, ttt_scan

POSITION_SCALES = ("none", "fixed", "learnable")


@dataclass(frozen=True)
class TTTConfig:
    """Hyperparameters of a TTT layer (symbols of Sun et al., 2024).

    width: model width D; num_heads: H (must divide D); mini_batch_size: b (16 in the paper);
    base_lr: eta_base (None: 1.0 for TTT-Linear, 0.1 for TTT-MLP); position_scale: see the module
    docstring; mlp_expansion: hidden width of TTT-MLP's inner model in units of d (4);
    init_std: std of the initial inner weights and of w_lr (0.02); form: the default inner form.
    """

    width: int
    num_heads: int
    mini_batch_size: int = 16
    base_lr: float | None = None
    position_scale: str = "none"
    mlp_expansion: int = 4
    init_std: float = 0.02
    form: str = "dual"

    def __post_init__(self) -> None:
        for name in ("width", "num_heads", "mini_batch_size", "mlp_expansion"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"num_heads: must divide width {self.width}, got {self.num_heads}")
        if self.base_lr is not None and not self.base_lr > 0:
            raise ValueError(f"base_lr: must be positive, got {self.base_lr!r}")
        if self.position_scale not in POSITION_SCALES:
            valid = ", ".join(POSITION_SCALES)
            raise ValueError(f"position_scale: must be one of {valid}, got {self.position_scale!r}")
        if self.form not in FORMS:
            raise ValueError(f"form: must be one of {', '.join(FORMS)}, got {self.form!r}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


class TTTCache:
    """The decoding cache of one TTT layer: the inner state and the number of tokens seen."""

    def __init__(self) -> None:
        self.state: InnerState | None = None
        self.seen = 0


def check_sequence(x: torch.Tensor, width: int, name: str = "x") -> None:
    """Raise ValueError unless x is a finite floating (B, L, width) tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != width:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor (B, L, {width}), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")


class TTTLayer(nn.Module):
    """Multi-head TTT layer; use :class:`TTTLinear` or :class:`TTTMLP`.

    ``forward(x, cache=None, form=None)``: x (B, L, D) -> (B, L, D), causal. Any L works; with b not
    dividing L the last mini-batch is partial and is computed exactly (no padding).

    Example::

        layer = TTTLinear(TTTConfig(width=64, num_heads=4))
        y = layer(torch.randn(2, 32, 64))
    """

    inner_layers = 1

    def __init__(self, config: TTTConfig) -> None:
        super().__init__()
        self.config = config
        h, d, width = config.num_heads, config.head_dim, config.width
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width, bias=False) for _ in range(4))
        self.lr_weight = nn.Parameter(torch.randn(h, width) * config.init_std)
        self.lr_bias = nn.Parameter(torch.zeros(h))
        self.ln_weight = nn.Parameter(torch.ones(h, d))
        self.ln_bias = nn.Parameter(torch.zeros(h, d))
        dims = [d, d] if self.inner_layers == 1 else [d, config.mlp_expansion * d, d]
        self.inner = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            self.inner.append(nn.Parameter(torch.randn(h, d_in, d_out) * config.init_std))
            self.inner.append(nn.Parameter(torch.zeros(h, 1, d_out)))
        self.register_buffer("token_idx", 1.0 / torch.arange(1, config.mini_batch_size + 1), persistent=False)
        if config.position_scale == "learnable":
            self.token_idx_offset = nn.Parameter(torch.zeros(config.mini_batch_size))
        self.post_norm = nn.LayerNorm(width, eps=1e-6)

    @property
    def base_lr(self) -> float:
        if self.config.base_lr is not None:
            return self.config.base_lr
        return 1.0 if self.inner_layers == 1 else 0.1

    def position_scale(self) -> torch.Tensor | None:
        """s (b,) or None for s = 1."""
        if self.config.position_scale == "none":
            return None
        if self.config.position_scale == "fixed":
            return self.token_idx
        return torch.clamp_min(self.token_idx + self.token_idx_offset, 0.0)

    def inner_lr(self, x: torch.Tensor) -> torch.Tensor:
        """eta (B, H, L) = base_lr * sigmoid(x w_lr^T + b_lr) / d."""
        gate = torch.einsum("bld,hd->bhl", x, self.lr_weight) + self.lr_bias[None, :, None]
        return self.base_lr * torch.sigmoid(gate) / self.config.head_dim

    def initial_state(self, batch: int) -> InnerState:
        return InnerState(tuple(p.unsqueeze(0).expand(batch, *p.shape) for p in self.inner))

    def forward(self, x: torch.Tensor, cache: TTTCache | None = None, form: str | None = None) -> torch.Tensor:
        cfg = self.config
        check_sequence(x, cfg.width)
        if form is None:  # decoding a piece shorter than a mini-batch: the primal form, as the official code does
            form = "primal" if cache is not None and x.shape[1] < cfg.mini_batch_size else cfg.form
        if form not in FORMS:
            raise ValueError(f"form: must be one of {', '.join(FORMS)}, got {form!r}")
        bsz, length, _ = x.shape
        state = cache.state if cache is not None and cache.state is not None else self.initial_state(bsz)
        if state.params[0].shape[0] != bsz:
            raise ValueError(f"cache: holds a batch of {state.params[0].shape[0]}, got x with batch {bsz}")

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, length, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # (B, H, L, d)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        z, state = ttt_scan(q, k, v, self.inner_lr(x), state, ln_weight=self.ln_weight, ln_bias=self.ln_bias,
                            mini_batch_size=cfg.mini_batch_size, form=form, scale=self.position_scale())
        if cache is not None:
            cache.state, cache.seen = state, cache.seen + length
        z = z.transpose(1, 2).reshape(bsz, length, cfg.width)  # (B, L, D)
        return self.o_proj(self.post_norm(z))


class TTTLinear(TTTLayer):
    """TTT-Linear: the inner model is f(x) = x W + b per head, W (d, d)."""

    inner_layers = 1


class TTTMLP(TTTLayer):
    """TTT-MLP: the inner model is f(x) = GELU(x W1 + b1) W2 + b2 per head, W1 (d, 4d), W2 (4d, d)."""

    inner_layers = 2

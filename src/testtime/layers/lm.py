"""A small pre-norm block and a tiny causal language model around any sequence mixer.

Block (as in the TTT paper's Transformer backbone, Sec. 3): ``x + mixer(LN(x))`` then
``x + MLP(LN(x))`` with a 4x GELU MLP. The LM: token and learnt absolute position embeddings,
``depth`` blocks, a final LayerNorm and an output head tied to the token embedding. The mixers are
registered by name (``list_mixers()``): ``ttt-linear``, ``ttt-mlp``, ``linear-attention``,
``softmax-attention``, each of the same size (four width x width projections; the TTT layers add
their inner weights, learning-rate gate and norms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from testtime.layers.attention import LinearAttention, SoftmaxAttention
from testtime.layers.ttt import TTTMLP, TTTCache, TTTConfig, TTTLayer, TTTLinear
from testtime.registry import Registry

MIXERS: Registry = Registry("mixer")


@MIXERS.register("ttt-linear")
def _ttt_linear(width: int, num_heads: int, **options: Any) -> nn.Module:
    return TTTLinear(TTTConfig(width=width, num_heads=num_heads, **options))


@MIXERS.register("ttt-mlp")
def _ttt_mlp(width: int, num_heads: int, **options: Any) -> nn.Module:
    return TTTMLP(TTTConfig(width=width, num_heads=num_heads, **options))


@MIXERS.register("linear-attention")
def _linear_attention(width: int, num_heads: int) -> nn.Module:
    return LinearAttention(width, num_heads)


@MIXERS.register("softmax-attention")
def _softmax_attention(width: int, num_heads: int) -> nn.Module:
    return SoftmaxAttention(width, num_heads)


def list_mixers() -> list[str]:
    return MIXERS.names()


@dataclass(frozen=True)
class LMConfig:
    """A tiny causal LM: vocab_size tokens, width D, depth blocks, num_heads, max_len positions.

    mixer_options go to the mixer factory (for the TTT layers: TTTConfig fields, e.g.
    ``{"mini_batch_size": 16}``).
    """

    mixer: str = "ttt-linear"
    vocab_size: int = 256
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    max_len: int = 256
    mixer_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        MIXERS.canonical(self.mixer)
        for name in ("vocab_size", "width", "depth", "num_heads", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"num_heads: must divide width {self.width}, got {self.num_heads}")


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, mixer: nn.Module, width: int) -> None:
        super().__init__()
        self.norm1, self.mixer, self.norm2 = nn.LayerNorm(width), mixer, nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, cache: TTTCache | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + (self.mixer(h) if cache is None else self.mixer(h, cache=cache))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Causal LM; ``forward(tokens (B, L), caches=None) -> logits (B, L, vocab)``.

    Decoding: ``caches = model.new_caches()`` (TTT mixers only), then feed tokens in pieces; the
    position embedding continues from the number of tokens the caches have seen.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.pos = nn.Embedding(config.max_len, config.width)
        self.blocks = nn.ModuleList(
            Block(MIXERS.create(config.mixer, config.width, config.num_heads, **config.mixer_options), config.width)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def new_caches(self) -> list[TTTCache]:
        if not all(isinstance(b.mixer, TTTLayer) for b in self.blocks):
            raise ValueError(f"caches: decoding with a cache needs a TTT mixer, not {self.config.mixer!r}")
        return [TTTCache() for _ in self.blocks]

    def forward(self, tokens: torch.Tensor, caches: list[TTTCache] | None = None) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens: expected int64 (B, L), got {tokens.dtype} {tuple(tokens.shape)}")
        start = caches[0].seen if caches else 0
        if start + tokens.shape[1] > self.config.max_len:
            raise ValueError(f"tokens: at most max_len={self.config.max_len} positions, got {start + tokens.shape[1]}")
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches: expected {len(self.blocks)} (one per block), got {len(caches)}")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.norm(x))

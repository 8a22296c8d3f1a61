"""``source``: the unadapted model, in eval mode (the reference row of every table)."""

from __future__ import annotations

from dataclasses import dataclass

from testtime.methods.base import Method, MethodConfig, Requirements, register_method


@dataclass(frozen=True)
class SourceConfig(MethodConfig):
    steps: int = 0


@register_method("source")
class Source(Method):
    """No adaptation: the source model with its stored BN statistics (eval mode)."""

    Config = SourceConfig
    requirements = Requirements(adapts="nothing")
    default_order = "before"

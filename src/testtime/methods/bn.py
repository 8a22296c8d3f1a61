"""``bn``: test-batch normalisation statistics (PTBN).

Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation",
NeurIPS 2020; Nado et al., "Evaluating prediction-time batch normalization", 2020. Every BN layer
normalises with the mean and variance of the current test batch instead of the stored source
statistics; no parameter is updated. For CTA this is the control that separates what gradient
steps add from what test-batch statistics add.
"""

from __future__ import annotations

from dataclasses import dataclass

from testtime.methods.base import Method, MethodConfig, Requirements, register_method, use_batch_statistics


@dataclass(frozen=True)
class BNConfig(MethodConfig):
    steps: int = 0


@register_method("bn", aliases=("ptbn",))
class BN(Method):
    """Test-batch BN statistics, no gradient step."""

    Config = BNConfig
    requirements = Requirements(adapts="BN statistics (no parameters)", needs_bn=True)
    default_order = "before"

    def configure(self) -> None:
        super().configure()
        use_batch_statistics(self.model)

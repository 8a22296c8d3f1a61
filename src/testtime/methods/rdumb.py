"""``rdumb``: a base method (ETA by default) whose whole state is reset to the source every N steps.

Press, Schneider, Kümmerer and Bethge, "RDumb: A simple approach that questions our progress in
continual test-time adaptation", NeurIPS 2023 (official code: oripress/CCC, ``models/rdumb.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from testtime.losses.entropy import softmax_entropy
from testtime.methods.base import Requirements, register_method
from testtime.methods.eata import EATA, EATAConfig

BASES = ("eata", "tent")


@dataclass(frozen=True)
class RDumbConfig(EATAConfig):
    """RDumb's defaults (oripress/CCC ``models/rdumb.py``).

    - ``base``: ``"eata"`` = ETA, EATA's reliable (E < E_0, Eq. 3 of EATA) and non-redundant (cosine
      < 0.05, Eq. 5) entropy-weighted loss without the Fisher regulariser (the paper's choice); or
      ``"tent"``, the mean entropy of the batch.
    - ``reset_every``: N = 1000 steps between resets.
    - ``fisher_alpha``: 0 (no Fisher regulariser: ETA).
    - ``e_margin`` / ``e_margin_scale``: E_0 = 0.4 ln C (EATA's paper value). The official code hard-codes
      EATA's constructor default ``ln(1000) / 2 - 1`` (2.454 on ImageNet, against 0.4 ln 1000 = 2.763);
      pass ``e_margin=math.log(1000) / 2 - 1`` to reproduce it exactly. That formula gives a negative
      margin for C < 8 classes, which is why it is not generalised to ``ln C / 2 - 1`` here.
    - optimiser: SGD, lr 0.00025, momentum 0.9 (as EATA).
    """

    base: str = "eata"
    reset_every: int = 1000
    fisher_alpha: float = 0.0


@register_method("rdumb")
class RDumb(EATA):
    """RDumb (Press et al., NeurIPS 2023): ETA (EATA without its Fisher regulariser: BN-affine entropy
    minimisation on reliable, non-redundant samples weighted by ``exp(-(E - E_0))``) or TENT, and
    every N = 1000 steps everything is reset to the source: the model's weights, the optimiser's state
    and ETA's moving-average prediction. As in the official code, steps are counted per forward pass on
    a test batch (whether or not the filters leave samples to update on) and the reset happens before
    the forward pass of step N, 2N, ...; the counter itself is not reset by it (``reset()`` restarts
    everything, counter included). Predictions are those of the adaptation forward pass.

    Example::

        m = create_method("rdumb", model)                  # ETA, reset every 1000 steps
        m = create_method("rdumb", model, base="tent", reset_every=500)
    """

    paper = ('Press et al., "RDumb: A simple approach that questions our progress in continual test-time '
             'adaptation", NeurIPS 2023')
    Config = RDumbConfig
    requirements = Requirements(
        adapts="BN affine (gamma, beta), reset to the source every N steps; BN uses test-batch statistics",
        needs_bn=True,
    )
    default_order = "before"

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        c = self.config
        if c.base not in BASES:
            raise ValueError(f"rdumb: base must be one of {', '.join(BASES)}; got {c.base!r}")
        if c.reset_every < 1:
            raise ValueError(f"rdumb: reset_every must be >= 1; got {c.reset_every}")

    def configure(self) -> None:
        super().configure()
        self.register_state("steps_done", torch.zeros((), dtype=torch.long))
        self.resets = 0  # diagnostic, not state

    def reset_to_source(self) -> None:
        """RDumb's periodic reset: the snapshot (source weights, optimiser, ETA state), the step counter kept."""
        done = self.steps_done.clone()
        self.reset()
        self.steps_done.copy_(done)
        self.resets += 1

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        n = int(self.steps_done)
        if n > 0 and n % self.config.reset_every == 0:
            self.reset_to_source()
        self.steps_done += 1
        if self.config.base == "eata":
            return super().loss(x)
        logits = self.model(x)  # (B, K)
        return softmax_entropy(logits).mean(0), logits

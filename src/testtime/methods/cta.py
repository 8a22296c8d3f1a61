"""``cta``: test-time training of CTA (Barbeau et al., "CTA: Cross-Task Alignment for Better Test
Time Training", section 3.5).

The test-time model is ``h(pi(g(x)))``: the aligned self-supervised encoder g and its linear
projector pi feed the frozen supervised classifier h. On every test batch, ALL parameters of pi and g
are updated with the SimCLR loss L_con (Eq. 1, tau 0.01) on two views per image (the TTT++ recipe),
``steps`` times with Adam (paper: 20 iterations, lr 1e-6, batch 128), then the batch is predicted
("after"). Under the episodic protocol the method is reset to the aligned weights before every batch.
The supervised encoder f is not part of the test-time model and is never loaded.

BatchNorm: by default (``bn="batch"``) BN layers of g use the statistics of the current test batch,
both for the SSL forward passes and for the prediction, as the TTT lineage's code does (the model
stays in train mode); the stored statistics are not modified, so reset is exact. ``bn="source"``
keeps the stored source statistics (eval mode) for the prediction and the updates. The results
report the aligned model with test-batch statistics and no step (method ``bn`` on the same bundle),
so that the share of CTA's gain that comes from BN statistics alone is visible.

Batch size 1: NT-Xent needs at least 2 images (negatives); ``min_batch_size`` is 2.

CTA-C (``cta-c``) and the Y model (``y-model``) are the same code with another model bundle; see
:mod:`testtime.methods.cta_c` and :mod:`testtime.methods.y_model`.

Example::

    bundle = ProjectedClassifier(g, pi, h)               # aligned g, pi and the frozen classifier h
    method = create_method("cta", bundle, steps=20, lr=1e-6)
    logits = method(x)                                    # 20 steps on x, then predict x
    method.reset()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from testtime.losses import nt_xent
from testtime.methods.base import Method, MethodConfig, Requirements, register_method, use_batch_statistics
from testtime.models.heads import ProjectedClassifier
from testtime.transforms import SimCLRViewsConfig, simclr_views


@dataclass(frozen=True)
class CTAConfig(MethodConfig):
    """CTA test-time settings (paper section 4: batch 128, fixed lr 1e-6, Adam; Fig. 3: 20 iterations)."""

    steps: int = 20
    lr: float = 1e-6
    optimizer: str = "adam"
    tau: float = 0.01  # Eq. 1 temperature at test time (section 5.1)
    bn: str = "batch"  # "batch": test-batch BN statistics (lineage's code); "source": stored statistics
    views: SimCLRViewsConfig = field(default_factory=SimCLRViewsConfig)


class ContrastiveTTT(Method):
    """Shared code of CTA, CTA-C and the Y model: Eq. 1 on ``pi(g(views))``, h frozen.

    ``adapted_modules`` names the parts of the :class:`ProjectedClassifier` that are updated.
    """

    Config = CTAConfig
    requirements = Requirements(
        adapts="encoder g and projector pi (all parameters)", min_batch_size=2, needs_aux_head=True, views="simclr"
    )
    default_order = "after"
    adapted_modules: tuple[str, ...] = ("encoder", "projector")
    through_projector = True

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        from testtime.models import create_model
        from testtime.models.heads import projector

        m = create_model("resnet8", num_classes=num_classes, in_chans=in_chans)
        return ProjectedClassifier(
            m.encoder, projector(m.feature_dim, identity=True), m.fc, through_projector=cls.through_projector
        )

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, ProjectedClassifier):
            raise ValueError(
                f"method {self.name!r} needs a ProjectedClassifier(encoder g, projector pi, classifier h); "
                f"got {type(model).__name__}. Build one with testtime.models.heads.ProjectedClassifier or "
                "load a trained bundle with testtime.api.load_bundle"
            )
        if model.through_projector != self.through_projector:
            raise ValueError(
                f"method {self.name!r} expects through_projector={self.through_projector} "
                f"(got {model.through_projector})"
            )
        if self.config.bn not in ("batch", "source"):
            raise ValueError(f"bn must be 'batch' or 'source', got {self.config.bn!r}")

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        for name in self.adapted_modules:
            getattr(self.model, name).requires_grad_(True)
        if self.config.bn == "batch":
            use_batch_statistics(self.model)
        self._need_logits = True

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._need_logits = True
        return super().adapt(x)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1 on two SimCLR views of ``x``; logits (B, K) of ``x`` before the first step of this call."""
        b = x.shape[0]
        v1, v2 = simclr_views(x, self.generator, self.config.views)
        z = self.model.ssl_embed(torch.cat([v1, v2]))  # (2B, D)
        loss = nt_xent(z[:b], z[b:], self.config.tau)
        if self._need_logits:  # the logits of x before any step (used by order "before")
            self._need_logits = False
            with torch.no_grad():
                self._first_logits = self.model(x)
        logits = self._first_logits  # later steps: the base loop only keeps the first step's logits
        return loss, logits


@register_method("cta")
class CTA(ContrastiveTTT):
    """CTA: h(pi(g(x))), update all of g and pi with Eq. 1, h frozen."""

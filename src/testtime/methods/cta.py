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
keeps the stored source statistics (eval mode) for the prediction and the updates, so only the
gradient steps act. ``bn="lineage"`` is the convention of the lineage's code (ClusT3, NC-TTT: adapt in
train mode, predict in eval mode): the SSL passes normalise with the views' batch statistics and move
the running statistics with the layers' momentum, and predictions use those moved running statistics;
the running statistics are state, restored by ``reset()``. The results
report the aligned model with test-batch statistics and no step (method ``bn`` on the same bundle),
so that the share of CTA's gain that comes from BN statistics alone is visible.

Batch size 1: NT-Xent needs at least 2 images (negatives); ``min_batch_size`` is 2.

Early stopping (an option of this library, not in the paper, off by default): ``stop="loss"`` ends
the iterations on a batch once the relative change of the SSL loss between consecutive iterations,
``|L_k - L_(k-1)| / |L_(k-1)|``, has been at most ``stop_eps`` for ``stop_patience`` iterations in a
row; ``stop="predictions"`` once the fraction of the batch whose predicted class changed between
consecutive iterations has (this costs one no-grad forward of the batch per iteration). The
iteration that observes the criterion does not update; the later ones cost nothing. Label-free:
neither rule looks at labels. Each iteration's loss is taken on fresh random views, so the loss
rule's ``stop_eps`` must sit above the noise of the view sampling to ever fire early.
``last_steps`` is the number of updates made on the last batch (a diagnostic, not state).

Memory (an option of this library, off by default): ``checkpoint="stages"`` checkpoints each
top-level stage of g during the SSL forward (``torch.utils.checkpoint``, non-reentrant; the
children of ``g.layers`` for the CIFAR ResNets and airbench, the whole of g for an encoder without
a ``layers`` Sequential), ``checkpoint="blocks"`` each residual block of those stages (see
:mod:`testtime.methods._checkpoint`): the 2B views' activations inside a region are recomputed at
backward instead of kept, for one more forward of g's stages per iteration. It is
exact in every ``bn`` mode: the recomputation runs with the modes of the forward and puts the BN
buffers back, so running statistics (``bn="lineage"``) move once per SSL pass, as without it; the
views are drawn before the checkpointed region, so the generator is unaffected. Figures (peak
memory against TENT, iteration cost) in docs/performance.md, target 3.

CTA-C (``cta-c``) and the Y model (``y-model``) are the same code with another model bundle; see
:mod:`testtime.methods.cta_c` and :mod:`testtime.methods.y_model`.

Example::

    bundle = ProjectedClassifier(g, pi, h)               # aligned g, pi and the frozen classifier h
    method = create_method("cta", bundle, steps=20, lr=1e-6)
    logits = method(x)                                    # 20 steps on x, then predict x
    method.reset()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from testtime.losses import nt_xent
from testtime.methods._checkpoint import check_mode as check_checkpoint_mode
from testtime.methods._checkpoint import checkpoint_regions, checkpointed
from testtime.methods.base import (
    Method,
    MethodConfig,
    Requirements,
    batchnorm_layers,
    register_method,
    use_batch_statistics,
)
from testtime.models.heads import ProjectedClassifier
from testtime.transforms import SimCLRViewsConfig, simclr_views


@dataclass(frozen=True)
class CTAConfig(MethodConfig):
    """CTA test-time settings (paper section 4: batch 128, fixed lr 1e-6, Adam; Fig. 3: 20 iterations)."""

    steps: int = 20
    lr: float = 1e-6
    optimizer: str = "adam"
    tau: float = 0.01  # Eq. 1 temperature at test time (section 5.1)
    bn: str = "batch"  # "batch": test-batch statistics; "source": stored ones; "lineage": see ContrastiveTTT
    views: SimCLRViewsConfig = field(default_factory=SimCLRViewsConfig)
    stop: str = "none"  # label-free early stopping: "none" (the paper) | "loss" | "predictions"
    stop_eps: float = 1e-3  # the change at or below which an iteration counts as converged
    stop_patience: int = 1  # converged iterations in a row before stopping
    checkpoint: str = "none"  # "none" | "stages" | "blocks": recompute g's activations at backward (exact; memory)


STOP_RULES = ("none", "loss", "predictions")
BN_MODES = ("batch", "source", "lineage")


def converged(changes: Sequence[float], eps: float, patience: int = 1) -> bool:
    """The early-stopping test: the last ``patience`` changes between iterations are all <= ``eps``.

    ``changes[k]`` is the change between iteration k and k+1 (a relative loss change or the fraction
    of changed predictions); NaN never counts as converged.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    return len(changes) >= patience and all(c <= eps for c in changes[-patience:])


class ContrastiveTTT(Method):
    """Shared code of CTA, CTA-C and the Y model: Eq. 1 on ``pi(g(views))``, h frozen.

    ``adapted_modules`` names the parts of the :class:`ProjectedClassifier` that are updated.
    """

    Config = CTAConfig
    requirements = Requirements(
        adapts="encoder g and projector pi (all parameters)", min_batch_size=2, needs_aux_head=True, views="simclr"
    )
    default_order = "after"
    paper = 'Barbeau et al., "CTA: Cross-Task Alignment for Better Test Time Training", 2025 (CTA-C, Y model: 5.3)'
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
        if self.config.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {self.config.bn!r}")
        c = self.config
        if c.stop not in STOP_RULES:
            raise ValueError(f"stop must be one of {', '.join(STOP_RULES)}; got {c.stop!r}")
        if not c.stop_eps >= 0 or c.stop_patience < 1:
            raise ValueError(f"stop_eps must be >= 0 and stop_patience >= 1, got {c.stop_eps}, {c.stop_patience}")
        check_checkpoint_mode(c.checkpoint)

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        for name in self.adapted_modules:
            getattr(self.model, name).requires_grad_(True)
        if self.config.bn == "batch":
            use_batch_statistics(self.model)
        self._lineage_bn = batchnorm_layers(self.model) if self.config.bn == "lineage" else []
        self._checkpoint_regions = checkpoint_regions(self.model.encoder, self.config.checkpoint)
        self._new_batch()

    def _bn_mode(self, train: bool) -> None:
        """``bn="lineage"``: BN layers in train mode (batch statistics, running statistics moved with
        their momentum) for the SSL passes, in eval mode (running statistics) for predictions."""
        for m in self._lineage_bn:
            m.train(train)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._bn_mode(False)
        return self.model(x)

    def _new_batch(self) -> None:
        self._need_logits = True
        self._stopped = False
        self._previous: Any = None  # the last loss value (float) or predictions (B,)
        self._changes: list[float] = []
        self.last_steps = 0

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._new_batch()
        return super().adapt(x)

    def after_step(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        self.last_steps += 1

    def _record(self, current: float | torch.Tensor, change: float | None) -> bool:
        if change is not None:
            self._changes.append(change)
        self._previous = current
        return converged(self._changes, self.config.stop_eps, self.config.stop_patience)

    def _loss_converged(self, loss: torch.Tensor) -> bool:
        """Loss rule: record |L_k - L_(k-1)| / |L_(k-1)|; True when the rule says stop."""
        current = float(loss.detach())
        prev = self._previous
        return self._record(current, None if prev is None else abs(current - prev) / max(abs(prev), 1e-12))

    def _predictions_converged(self, x: torch.Tensor) -> bool:
        """Prediction rule: record the fraction of changed predictions; True when the rule says stop."""
        if self._previous is None:  # the first iteration's predictions are the pre-update logits'
            return self._record(self._first_logits.argmax(1), None)
        with torch.no_grad():
            current = self.model(x).argmax(1)  # (B,)
        return self._record(current, float((current != self._previous).float().mean()))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Eq. 1 on two SimCLR views of ``x``; logits (B, K) of ``x`` before the first step of this call.

        The no-grad forward passes of ``x`` run before the SSL forward, so the prediction rule stops
        before any view is drawn or forwarded.
        """
        if self._need_logits:  # the logits of x before any step (used by order "before")
            self._need_logits = False
            with torch.no_grad():
                self._first_logits = self.model(x)
        logits = self._first_logits  # later steps: the base loop only keeps the first step's logits
        stop = self.config.stop
        if self._stopped or (stop == "predictions" and self._predictions_converged(x)):
            self._stopped = True  # early stopping fired: this and the remaining iterations do nothing
            return None, logits
        b = x.shape[0]
        v1, v2 = simclr_views(x, self.generator, self.config.views)
        self._bn_mode(True)
        with checkpointed(self._checkpoint_regions):  # no regions: a plain forward
            z = self.model.ssl_embed(torch.cat([v1, v2]))  # (2B, D)
        self._bn_mode(False)
        loss = nt_xent(z[:b], z[b:], self.config.tau)
        if stop == "loss" and self._loss_converged(loss):
            self._stopped = True
            return None, logits
        return loss, logits


@register_method("cta")
class CTA(ContrastiveTTT):
    """CTA: h(pi(g(x))), update all of g and pi with Eq. 1, h frozen."""

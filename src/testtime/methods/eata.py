"""``eata``: efficient anti-forgetting test-time adaptation (sample-weighted entropy + Fisher regulariser).

Niu, Wu, Zhang, Chen, Zheng, Zhao and Tan, "Efficient Test-Time Model Adaptation without
Forgetting", ICML 2022 (official code: mr-eggplant/EATA).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testtime.losses.entropy import softmax_entropy
from testtime.methods.base import Method, MethodConfig, Requirements, register_method
from testtime.methods.tent import (
    bn_affine_params,
    check_bn_layers,
    confident_example_model,
    configure_bn_adaptation,
)


@dataclass(frozen=True)
class EntropyFilterConfig(MethodConfig):
    """The reliable-sample entropy filter of EATA (Eq. 3) that SAR reuses (Eq. 2), with the optimiser
    both official codes use (SGD, lr 0.00025, momentum 0.9, one step per batch).

    A sample is reliable when its prediction entropy E is below E_0 (:meth:`e0`):

    - ``e_margin``: E_0 itself; ``None`` means ``e_margin_scale * ln C`` with C the number of classes
      (both papers: 0.4 ln 1000 on ImageNet).
    - ``e_margin_scale``: the factor of ``ln C`` (0.4).

    Example::

        >>> round(EntropyFilterConfig().e0(10), 4)  # 0.4 ln 10
        0.921
    """

    steps: int = 1
    lr: float = 0.00025
    optimizer: str = "sgd"
    momentum: float = 0.9
    e_margin: float | None = None
    e_margin_scale: float = 0.4

    def e0(self, num_classes: int) -> float:
        """E_0 for ``num_classes`` classes: ``e_margin`` if set, else ``e_margin_scale * ln C``."""
        return float(self.e_margin) if self.e_margin is not None else self.e_margin_scale * math.log(num_classes)


@dataclass(frozen=True)
class EATAConfig(EntropyFilterConfig):
    """EATA's defaults (mr-eggplant/EATA ``main.py``).

    - ``e_margin`` / ``e_margin_scale``: E_0 of Eq. 3/6, see :class:`EntropyFilterConfig`
      (0.4 ln C; the optimiser there too: SGD, lr 0.00025, momentum 0.9, ImageNet batch 64).
    - ``d_margin``: epsilon, the cosine-similarity redundancy margin of Eq. 5 (0.05, ImageNet). On 10
      classes use 0.4, the CIFAR-10-C setting of the code's benchmarks: a confident prediction's cosine
      similarity to a near-uniform mean prediction is about 1/sqrt(10) = 0.32, so with 0.05 no sample
      passes Eq. 5 after the first batch and EATA stops adapting (measured on ``cifar10-cpu``).
    - ``prob_momentum``: the moving average of the mean prediction used by Eq. 5 (0.9 in the code).
    - ``fisher_alpha``: beta, the weight of the Fisher regulariser of Eq. 8 (2000, ImageNet; 1 in the
      CIFAR-10-C setting).
    - ``bn_layers``: ``"all"`` BatchNorm types adapted (default) or ``"2d"`` only, as the official
      ``collect_params`` (see :func:`~testtime.methods.tent.adapted_bn_layers`).
    """

    d_margin: float = 0.05
    prob_momentum: float = 0.9
    fisher_alpha: float = 2000.0
    bn_layers: str = "all"

    def __post_init__(self) -> None:
        check_bn_layers(self.bn_layers)


@torch.no_grad()
def update_moving_average(
    avg: torch.Tensor, started: torch.Tensor, value: torch.Tensor | float, momentum: float
) -> None:
    """In place: ``avg <- momentum * avg + (1 - momentum) * value``, or ``avg <- value`` (and ``started``
    set) the first time. EATA's mean prediction (Eq. 5) and SAR's loss average (Section 4) both start
    at their first value. ``avg`` and ``value`` have the same shape ((K,) probabilities or a scalar).

    Example::

        >>> avg, started = torch.zeros(()), torch.zeros((), dtype=torch.bool)
        >>> update_moving_average(avg, started, 1.0, 0.9); update_moving_average(avg, started, 0.0, 0.9)
        >>> round(float(avg), 4)
        0.9
    """
    if bool(started):
        avg.mul_(momentum).add_((1 - momentum) * value)
    else:
        if isinstance(value, torch.Tensor):
            avg.copy_(value)
        else:
            avg.fill_(value)
        started.fill_(True)


@register_method("eata")
class EATA(Method):
    """EATA (Niu et al., ICML 2022): TENT's BN-affine entropy minimisation, restricted to reliable
    and non-redundant samples and regularised against forgetting. A sample is used when its entropy
    E is below E_0 = 0.4 ln C (Eq. 3) and its prediction's cosine similarity to a moving average of
    past mean predictions is below epsilon = 0.05 (Eq. 5); used samples are weighted by
    ``1 / exp(E - E_0)`` (Eq. 6) and the loss adds ``beta sum_i F_i (theta_i - theta_i^0)^2`` (Eq. 8),
    with Fisher weights F from the squared gradients of the pseudo-label cross-entropy on source
    samples. Call :meth:`compute_fisher` with source batches for the full method; without it the
    regulariser is off (F = 0, the paper's "ETA" variant) and a warning says so. Predictions are those
    of the adaptation forward pass (before the update); with ``steps > 1`` those of the last step's
    forward pass, as the official loop returns.

    Example::

        m = create_method("eata", model)
        m.compute_fisher(source_batches)   # iterable of (B, C, H, W) tensors in [0, 1], or (x, y)
        logits = m(x)
    """

    paper = 'Niu et al., "Efficient Test-Time Model Adaptation without Forgetting", ICML 2022'
    Config = EATAConfig
    requirements = Requirements(
        adapts="BN affine (gamma, beta); BN uses test-batch statistics",
        needs_bn=True,
        needs_source_data=True,
    )
    default_order = "before"
    before_logits = "last"

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        """A ResNet-8 with a sharpened head, so that some samples pass the entropy filter E < E_0."""
        return confident_example_model(num_classes, in_chans)

    def configure(self) -> None:
        c = self.config
        if c.d_margin <= 0 or not 0 <= c.prob_momentum < 1 or c.fisher_alpha < 0:
            raise ValueError(f"eata: need d_margin > 0, 0 <= prob_momentum < 1, fisher_alpha >= 0; got "
                             f"{c.d_margin}, {c.prob_momentum}, {c.fisher_alpha}")
        configure_bn_adaptation(self.model, c.bn_layers)
        flat = torch.cat([p.detach().reshape(-1) for _, p in self.params()])  # (P,)
        # Declared state: Fisher weights F (zeros until compute_fisher), the source weights theta^0,
        # the moving average of the mean prediction (Eq. 5) and whether it has been initialised.
        self.register_state("fisher", torch.zeros_like(flat))
        self.register_state("theta0", flat)
        self.register_state("model_probs", torch.zeros(self._num_classes()))
        self.register_state("has_probs", torch.zeros((), dtype=torch.bool))
        self.register_state("fisher_ready", torch.zeros((), dtype=torch.bool))
        self._warned = False
        # Diagnostics of the last step (not state): how many samples passed each filter.
        self.last_reliable = 0
        self.last_selected = 0

    def _num_classes(self) -> int:
        """C, from the model's last ``nn.Linear`` (the size of the moving-average prediction of Eq. 5)."""
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("method 'eata' needs a classifier ending in an nn.Linear layer (to size the "
                             "moving-average prediction of Eq. 5); the model has none")
        return int(linears[-1].out_features)

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return bn_affine_params(self, self.model, self.config.bn_layers)

    def e0(self, num_classes: int) -> float:
        """E_0 of Eq. 3 for ``num_classes`` classes (:meth:`EntropyFilterConfig.e0`)."""
        return self.config.e0(num_classes)

    # ----- Fisher regulariser (Eq. 7-8) ---------------------------------------------------
    def compute_fisher(self, source_batches: Iterable) -> int:
        """Fisher weights of the adapted parameters from source samples (EATA Eq. 7-8, as the code does).

        For each batch: pseudo-labels ``y_hat = argmax f(x)``, ``CE(f(x), y_hat)`` (batch mean), backward;
        ``F = mean over batches of grad^2``. The model is not changed. Returns the number of samples used.
        ``source_batches``: float tensors (B, C, H, W) in [0, 1], or tuples whose first item is one.
        The result is part of the reset point (``reset()`` keeps it).
        """
        params = [p for _, p in self.params()]
        total = torch.zeros_like(self.fisher)
        n_batches = n_samples = 0
        with torch.enable_grad():
            for batch in source_batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
                    raise ValueError("eata.compute_fisher: source_batches must yield float tensors (B, C, H, W) "
                                     f"in [0, 1] (or (x, y) tuples), got {getattr(x, 'shape', type(x))}")
                x = x.to(self.fisher.device)
                logits = self.model(x)
                loss = F.cross_entropy(logits, logits.argmax(1))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                total += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) ** 2
                                    for g, p in zip(grads, params)])
                n_batches += 1
                n_samples += x.shape[0]
        if n_batches == 0:
            raise ValueError("eata.compute_fisher: source_batches is empty; give at least one batch of source images")
        with torch.no_grad():
            self.fisher.copy_(total / n_batches)
            self.fisher_ready.fill_(True)
        assert self._snapshot is not None
        self._snapshot["state"]["fisher"] = self.fisher.detach().clone()
        self._snapshot["state"]["fisher_ready"] = self.fisher_ready.detach().clone()
        return n_samples

    def regulariser(self) -> torch.Tensor:
        """``beta * sum_i F_i (theta_i - theta_i^0)^2`` (Eq. 8)."""
        theta = torch.cat([p.reshape(-1) for _, p in self.params()])  # (P,)
        return self.config.fisher_alpha * (self.fisher * (theta - self.theta0) ** 2).sum()

    # ----- the step -----------------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not bool(self.fisher_ready) and self.config.fisher_alpha > 0 and not self._warned:
            warnings.warn("eata: no source data given to compute_fisher(); the anti-forgetting regulariser is "
                          "off (Fisher = 0, the 'ETA' variant of the EATA paper)", stacklevel=2)
            self._warned = True
        logits = self.model(x)  # (B, K)
        ent = softmax_entropy(logits)  # (B,)
        e0 = self.e0(logits.shape[1])
        reliable = ent < e0  # Eq. 3
        probs = logits.detach().softmax(1)  # (B, K)
        selected = reliable.clone()
        if bool(self.has_probs):
            cos = F.cosine_similarity(self.model_probs.unsqueeze(0), probs, dim=1)  # (B,)
            selected &= cos.abs() < self.config.d_margin  # Eq. 5
        self.last_reliable, self.last_selected = int(reliable.sum()), int(selected.sum())
        self._update_probs(probs[selected])
        if not selected.any():
            return None, logits
        e = ent[selected]
        weights = torch.exp(-(e.detach() - e0))  # Eq. 6: 1 / exp(E - E_0)
        loss = (weights * e).mean()
        if bool(self.fisher_ready) and self.config.fisher_alpha > 0:
            loss = loss + self.regulariser()
        return loss, logits

    @torch.no_grad()
    def _update_probs(self, new_probs: torch.Tensor) -> None:
        """Moving average of the mean prediction of the selected samples (Eq. 5; kept when none)."""
        if new_probs.shape[0] == 0:
            return
        update_moving_average(self.model_probs, self.has_probs, new_probs.mean(0), self.config.prob_momentum)

"""``sar``: sharpness-aware and reliable entropy minimisation with model recovery.

Niu, Wu, Zhang, Wen, Chen, Zhao and Tan, "Towards Stable Test-Time Adaptation in Dynamic Wild
World", ICLR 2023 (official code: mr-eggplant/SAR).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from testtime.losses.entropy import softmax_entropy
from testtime.methods.base import Method, Requirements, register_method, use_batch_statistics
from testtime.methods.eata import EntropyFilterConfig, update_moving_average
from testtime.methods.tent import confident_example_model

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def check_norm_layers(model: nn.Module, name: str) -> None:
    """Raise when ``model`` has no BN/GN/LN layer (SAR and DeYO adapt their affine parameters)."""
    if not any(isinstance(m, NORM_LAYERS) for m in model.modules()):
        raise ValueError(f"method {name!r} adapts the affine parameters of normalisation layers "
                         "(BatchNorm/GroupNorm/LayerNorm) but the model has none")


def configure_norm_adaptation(model: nn.Module, exclude: tuple[str, ...], name: str) -> None:
    """Train mode, BN on test-batch statistics, only the affine parameters of the norm layers (BN, GN,
    LN) whose module name contains none of the ``exclude`` fragments as whole dotted components
    require grad (SAR, DeYO)."""
    model.train()
    model.requires_grad_(False)
    use_batch_statistics(model)
    for mod_name, m in model.named_modules():
        if isinstance(m, NORM_LAYERS) and not excluded(mod_name, exclude):
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if p is not None:
                    p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"method {name!r}: every normalisation layer is excluded by config.exclude "
                         f"{exclude}; nothing to adapt")


def trainable_model_params(method: nn.Module, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name relative to ``method``, parameter) of every parameter of ``model`` that requires grad."""
    ids = {id(p) for p in model.parameters() if p.requires_grad}
    return [(n, p) for n, p in method.named_parameters() if id(p) in ids]


@dataclass(frozen=True)
class SARConfig(EntropyFilterConfig):
    """SAR's defaults (mr-eggplant/SAR ``sar.py`` / ``main.py``).

    - ``e_margin`` / ``e_margin_scale``: E_0 of Eq. 2, EATA's reliable-sample filter (see
      :class:`~testtime.methods.eata.EntropyFilterConfig`: 0.4 ln C; base optimiser SGD, lr 0.00025,
      momentum 0.9, batch size >= 32).
    - ``rho``: the SAM neighbourhood radius of Eq. 4 (0.05).
    - ``reset_constant``: e_m, recover the source weights when the moving average of the loss drops
      below it (0.2, Section 4); ``ema_momentum`` 0.9 is that moving average's momentum.
    - ``step_on_empty``: what a batch with no reliable sample (at the first filter, or at the second
      one at ``w + eps``) does. ``True`` (the official code): the step is still taken with a zero
      gradient (mr-eggplant/SAR back-propagates the mean of an empty selection, whose gradient is
      zero, then calls ``second_step``), so SGD momentum still moves the weights by ``lr * momentum *
      buffer``; the loss average is left as it is (the official code skips it on a NaN loss).
      ``False``: no step on such a batch.
    - ``exclude``: norm layers left frozen, as the official ``collect_params``: the top stage of a
      ResNet-50 (``layer4``; in this package's 4-stage ResNets ``encoder.layers.3``; CIFAR ResNets have
      3 stages, so nothing is skipped there) and, for ViT-style models, ``blocks.9``, ``blocks.10``,
      ``blocks.11`` and the final ``norm``. A fragment matches a module whose dotted name contains it
      as whole components (``norm`` matches ``norm`` and ``vit.norm``, not ``norm1`` or ``fc_norm``).
      The official code tests substrings (``'blocks.9' in name``, ``'norm.' in name``) and the exact
      name ``norm``: the same layers on its timm ViT-B/16 and ResNet-50, and here a model wrapped in
      another module (``vit.norm``) keeps the same layers frozen.
    """

    rho: float = 0.05
    reset_constant: float = 0.2
    ema_momentum: float = 0.9
    step_on_empty: bool = True
    exclude: tuple[str, ...] = ("layer4", "encoder.layers.3", "blocks.9", "blocks.10", "blocks.11", "norm")


def excluded(name: str, fragments: Iterable[str]) -> bool:
    """Whether module ``name`` contains one of ``fragments`` as whole dotted components."""
    padded = f".{name}."
    return any(f".{frag.strip('.')}." in padded for frag in fragments)


@register_method("sar")
class SAR(Method):
    """SAR (Niu et al., ICLR 2023): entropy minimisation over the affine parameters of the norm
    layers (BN, GN or LN) that (i) keeps only samples whose entropy is below E_0 = 0.4 ln C (Eq. 2),
    (ii) minimises the sharpness-aware objective of Eq. 3 with one SAM step: perturb the weights
    by ``eps = rho g / ||g||`` (Eq. 4), recompute the filtered entropy there (filtering again), and
    apply that gradient at the original weights (Eq. 5), and (iii) recovers the source weights and
    optimiser state when the moving average of the second-pass loss falls below e_m = 0.2 (model
    collapse). A batch with no reliable sample still takes the (zero-gradient) step, so SGD momentum
    moves the weights, as in the official code (``step_on_empty``). BN layers use test-batch
    statistics. Batch size 1 is supported (SAR's wild-world setting; meaningful with GN/LN models).
    Predictions are from the first forward of a step (before its update); with ``steps > 1`` from
    the last step's first forward, as the official loop returns.

    Example::

        m = create_method("sar", create_model("resnet26", 10, norm="group"))
        logits = m(x)      # SAM step on the norm affine parameters, recovery when the loss collapses
    """

    paper = 'Niu et al., "Towards Stable Test-Time Adaptation in Dynamic Wild World", ICLR 2023'
    Config = SARConfig
    requirements = Requirements(adapts="norm-layer affine (BN/GN/LN gamma, beta), SAM update")
    default_order = "before"
    before_logits = "last"

    def check_model(self, model: nn.Module) -> None:
        check_norm_layers(model, self.name)
        c = self.config
        if c.rho <= 0 or not 0 <= c.ema_momentum < 1:
            raise ValueError(f"sar: need rho > 0 and 0 <= ema_momentum < 1; got rho={c.rho}, "
                             f"ema_momentum={c.ema_momentum}")

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        """A ResNet-8 with a sharpened head, so that some samples pass the entropy filter E < E_0."""
        return confident_example_model(num_classes, in_chans)

    def configure(self) -> None:
        configure_norm_adaptation(self.model, self.config.exclude, self.name)
        # Declared state: the moving average of the second-pass loss and whether it has started.
        self.register_state("ema", torch.zeros((), dtype=torch.float64))
        self.register_state("has_ema", torch.zeros((), dtype=torch.bool))
        self._pending: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self.recoveries = 0  # diagnostic, not state

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return trainable_model_params(self, self.model)

    def e0(self, num_classes: int) -> float:
        """E_0 of Eq. 2 for ``num_classes`` classes (:meth:`EntropyFilterConfig.e0`)."""
        return self.config.e0(num_classes)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        logits = self.model(x)  # (B, K)
        ent = softmax_entropy(logits)  # (B,)
        e0 = self.e0(logits.shape[1])
        reliable = ent < e0  # Eq. 2, first pass
        if not reliable.any():
            if not self.config.step_on_empty:
                return None, logits  # nothing reliable: no update on this batch
            self._pending = (x, reliable, e0)
            return ent[reliable].sum(), logits  # 0 with a zero gradient (step_on_empty, as the official code)
        self._pending = (x, reliable, e0)
        return ent[reliable].mean(), logits

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """SAM (Eq. 4-5): gradient at the original weights, ascend to ``w + eps``, take the gradient of
        the (re-filtered) entropy there, return to ``w`` and let the base optimiser step with it."""
        assert self.optimizer is not None and self._pending is not None
        x, reliable, e0 = self._pending
        self._pending = None
        params = self._params
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
        scale = self.config.rho / (grad_norm + 1e-12)
        old = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad * scale)  # w + eps(w)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(x):
            ent2 = softmax_entropy(self.model(x))[reliable]  # (R,)
        keep = ent2 < e0  # filter again at the perturbed weights
        if keep.any():
            loss2 = ent2[keep].mean()
            value = float(loss2.detach())
            if math.isfinite(value):
                self._update_ema(value)
            loss2.backward()
        elif self.config.step_on_empty:
            ent2[keep].sum().backward()  # zero gradients, so that the base optimiser still steps
        with torch.no_grad():
            for p, o in zip(params, old):
                p.copy_(o)  # back to w
        if keep.any() or self.config.step_on_empty:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _update_ema(self, value: float) -> None:
        """Moving average of the second-pass loss (Section 4), started at the first value."""
        update_moving_average(self.ema, self.has_ema, value, self.config.ema_momentum)

    def after_step(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        """Model recovery: source weights and optimiser state back when the loss EMA < e_m (the EMA stays)."""
        if bool(self.has_ema) and float(self.ema) < self.config.reset_constant:
            self.recover()

    def recover(self) -> None:
        assert self._snapshot is not None
        keep = {k: v.clone() for k, v in self.state_dict().items() if k in ("ema", "has_ema")}
        state = dict(self._snapshot["state"])
        state.update(keep)
        self.load_state_dict(state, strict=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optim"]))
        self.recoveries += 1

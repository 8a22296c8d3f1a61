"""``cotta``: continual test-time adaptation with an EMA teacher, augmentation-averaged pseudo-labels
and stochastic restore.

Wang, Fink, Van Gool and Dai, "Continual Test-Time Domain Adaptation", CVPR 2022 (official code:
qinenergy/cotta, ``cifar/cotta.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from testtime.losses.entropy import soft_cross_entropy
from testtime.methods.base import Method, MethodConfig, Requirements, register_method, use_batch_statistics
from testtime.transforms.cotta_aug import CoTTAAugConfig, cotta_augment


@dataclass(frozen=True)
class CoTTAConfig(MethodConfig):
    """CoTTA's CIFAR-10 defaults (qinenergy/cotta ``cifar/cfgs/cifar10/cotta.yaml``).

    - ``mt``: alpha, the teacher's EMA momentum (Eq. 2): 0.999.
    - ``rst``: p, the stochastic-restore probability per weight (Eq. 5-6): 0.01.
    - ``ap``: p_th, the confidence threshold of the anchor model below which the pseudo-label is
      averaged over augmentations (Eq. 4): 0.92 for CIFAR-10 (0.72 CIFAR-100, 0.1 ImageNet).
    - ``n_augmentations``: N = 32 augmented copies.
    - optimiser: Adam, lr 1e-3, betas (0.9, 0.999), no weight decay, 1 step per batch (batch 200).
    """

    steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    mt: float = 0.999
    rst: float = 0.01
    ap: float = 0.92
    n_augmentations: int = 32
    aug: CoTTAAugConfig = field(default_factory=CoTTAAugConfig)


@register_method("cotta")
class CoTTA(Method):
    """CoTTA (Wang et al., CVPR 2022): a student (all parameters; BN with test-batch statistics) is
    trained on each batch with the cross-entropy to a teacher's pseudo-label (Eq. 1); the teacher is
    an exponential moving average of the student (Eq. 2, alpha = 0.999); when the frozen source
    ("anchor") model's mean max-probability on the batch is below p_th = 0.92, the pseudo-label is the
    teacher's logits averaged over 32 augmented copies (Eq. 3-4); after every step each weight is
    reset to its source value with probability p = 0.01 (stochastic restore, Eq. 5-6), drawn from
    ``self.generator``. The returned prediction is the teacher's pseudo-label, as in the official code; with
    ``steps > 1`` the last step's (the official ``for _ in range(steps): outputs = forward_and_adapt(x)``).
    Teacher and anchor are declared state (submodules), so ``reset()`` restores them. Designed for
    the continual protocol (never reset).

    Example::

        m = create_method("cotta", model)
        logits = m(x)          # teacher prediction; student, teacher and restore updated
    """

    paper = 'Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022'
    Config = CoTTAConfig
    requirements = Requirements(adapts="all parameters (student), EMA teacher, stochastic restore", views="cotta-aug")
    default_order = "before"
    before_logits = "last"

    @classmethod
    def example_config(cls) -> CoTTAConfig:
        """Contract-test config: 4 augmented copies (the paper's 32 stay the default)."""
        return CoTTAConfig(n_augmentations=4)

    def check_model(self, model: nn.Module) -> None:
        c = self.config
        if not (0 <= c.mt <= 1 and 0 <= c.rst <= 1 and c.n_augmentations >= 1):
            raise ValueError(f"cotta: need 0 <= mt <= 1, 0 <= rst <= 1, n_augmentations >= 1; got mt={c.mt}, "
                             f"rst={c.rst}, n_augmentations={c.n_augmentations}")

    def configure(self) -> None:
        self.model.train()
        self.model.requires_grad_(True)
        use_batch_statistics(self.model)
        # Declared state: the EMA teacher and the frozen source anchor (submodules, so in the state dict).
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.used_augmentation = False  # diagnostic of the last step, not state

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return [(f"model.{n}", p) for n, p in self.model.named_parameters() if p.requires_grad]

    def adapted_parameter_names(self) -> list[str]:
        """Student parameters (gradient) and teacher parameters (EMA); the anchor never changes."""
        return [n for n, _ in self.params()] + [f"teacher.{n}" for n, _ in self.teacher.named_parameters()]

    @torch.no_grad()
    def pseudo_label(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, K): augmentation-averaged when the anchor is not confident (Eq. 3-4)."""
        anchor_conf = self.anchor(x).softmax(1).max(1).values  # (B,)
        self.used_augmentation = bool(anchor_conf.mean() < self.config.ap)
        if not self.used_augmentation:
            return self.teacher(x)
        total = None
        for _ in range(self.config.n_augmentations):
            out = self.teacher(cotta_augment(x, self.generator, self.config.aug))  # (B, K)
            total = out if total is None else total + out
        return total / self.config.n_augmentations

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        student = self.model(x)  # (B, K)
        teacher = self.pseudo_label(x)  # (B, K), no gradient
        return soft_cross_entropy(student, teacher).mean(0), teacher

    @torch.no_grad()
    def after_step(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        mt = self.config.mt
        for tp, sp in zip(self.teacher.parameters(), self.model.parameters()):
            tp.mul_(mt).add_(sp.detach(), alpha=1 - mt)  # Eq. 2
        if self.config.rst > 0:
            for sp, ap in zip(self.model.parameters(), self.anchor.parameters()):
                mask = (torch.rand(sp.shape, generator=self.generator) < self.config.rst).to(sp.device)
                sp.copy_(torch.where(mask, ap, sp))  # Eq. 5-6

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (the model CoTTA predicts with)."""
        return self.teacher(x)

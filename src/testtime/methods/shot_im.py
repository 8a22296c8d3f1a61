"""``shot-im``: SHOT's information-maximisation loss at test time (encoder updated, classifier frozen).

Liang, Hu and Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
Unsupervised Domain Adaptation", ICML 2020 (official code: tim-learn/SHOT, ``object/image_target.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from testtime.losses.information_maximization import information_maximization
from testtime.methods.base import Method, MethodConfig, Requirements, register_method, use_batch_statistics
from testtime.models.split import split_classifier


@dataclass(frozen=True)
class SHOTIMConfig(MethodConfig):
    """SHOT-IM's defaults (tim-learn/SHOT ``image_target.py``).

    - optimiser: SGD, momentum 0.9, Nesterov, weight decay 1e-3; ``lr`` 1e-3, the official rate of the
      backbone (base lr 1e-2 times ``lr_decay1`` 0.1; SHOT's extra bottleneck layer, absent here, uses 1e-2).
      SHOT's decay ``lr (1 + 10 t/T)^-0.75`` needs the stream length T, unknown online: not applied.
    - ``ent_par``: the weight of the IM loss (1.0); ``epsilon``: inside the logarithms (1e-5).
    - ``gent``: keep the diversity term (True; False leaves entropy minimisation of the encoder).
    """

    steps: int = 1
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-3
    nesterov: bool = True
    ent_par: float = 1.0
    epsilon: float = 1e-5
    gent: bool = True


@register_method("shot-im", aliases=("shot_im",))
class SHOTIM(Method):
    """SHOT-IM (Liang et al., ICML 2020): the source hypothesis (the classifier h) is frozen and the
    feature encoder f is trained to make its outputs individually certain and globally diverse:
    ``L_IM = mean_i H(p_i) - H(mean_i p_i)`` (:func:`~testtime.losses.information_maximization.
    information_maximization`, Section 3.2), one SGD step per test batch. SHOT's pseudo-labelling by
    self-supervised clustering is not part of this variant (the "SHOT-IM" row of the paper's ablation).
    Every parameter of the model except the classifier's is updated; BN layers normalise with the
    statistics of the test batch (stored statistics unchanged, so ``reset()`` is exact; SHOT trains in
    train mode too). Predictions are those of the adaptation forward pass (before the update). Needs
    batches of at least 2 images: with one image the diversity term equals minus the entropy term and
    the loss is identically 0.

    Example::

        m = create_method("shot-im", model)   # SGD lr 1e-3, momentum 0.9, Nesterov, wd 1e-3
        logits = m(x)
    """

    paper = ('Liang et al., "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for '
             'Unsupervised Domain Adaptation", ICML 2020')
    Config = SHOTIMConfig
    requirements = Requirements(adapts="encoder (all parameters but the classifier); BN uses test-batch statistics",
                                min_batch_size=2)
    default_order = "before"

    def check_model(self, model: nn.Module) -> None:
        c = self.config
        if c.ent_par <= 0 or c.epsilon < 0:
            raise ValueError(f"shot-im: need ent_par > 0 and epsilon >= 0; got ent_par={c.ent_par}, "
                             f"epsilon={c.epsilon}")
        split_classifier(model)  # fails in one line when the model has no recognisable linear head

    def configure(self) -> None:
        self.model.train()
        self.model.requires_grad_(True)
        use_batch_statistics(self.model)
        head = split_classifier(self.model)[1]
        head.requires_grad_(False)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("method 'shot-im': the model has no parameters outside its classifier to adapt")

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                   nesterov=c.nesterov and c.momentum > 0)
        return super().build_optimizer(params)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)  # (B, K)
        c = self.config
        loss, ent, div = information_maximization(logits.float(), c.epsilon)
        return c.ent_par * (loss if c.gent else ent), logits

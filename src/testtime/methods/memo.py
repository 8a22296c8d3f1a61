"""``memo``: marginal entropy minimisation over AugMix views of one test image, reset for every image.

Zhang, Levine and Finn, "MEMO: Test Time Robustness via Adaptation and Augmentation", NeurIPS 2022
(official code: zhangmarvin/memo, ``cifar-10-exps/test_calls/test_adapt.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from testtime.losses.marginal_entropy import marginal_entropy
from testtime.methods.base import Method, MethodConfig, Order, Requirements, register_method
from testtime.transforms.augmix import AugMixConfig, augmix_views


@dataclass(frozen=True)
class MEMOConfig(MethodConfig):
    """MEMO's CIFAR-10 defaults (``test_adapt.py``): B = 32 AugMix views per image, SGD lr 0.005
    without momentum or weight decay, 1 iteration, model in eval mode, source weights reloaded
    before every image."""

    steps: int = 1
    lr: float = 0.005
    optimizer: str = "sgd"
    momentum: float = 0.0
    n_views: int = 32
    augmix: AugMixConfig = field(default_factory=AugMixConfig)


@register_method("memo")
class MEMO(Method):
    """MEMO (Zhang et al., NeurIPS 2022): for each test image on its own, draw B = 32 AugMix views,
    take one SGD step (lr 0.005) on all parameters to minimise the entropy of the prediction
    averaged over the views (the marginal entropy, Eq. 2), predict the image with the adapted
    model, then go back to the source weights for the next image. Single-image by design, so batch
    size 1 is supported and a batch of B images costs B separate adaptations. The model stays in
    eval mode (BN uses its stored statistics), as in the official CIFAR code. The views are the
    official AugMix operations on 8-bit images (:mod:`testtime.transforms.augmix`: PIL's lookup tables,
    PIL's truncating bilinear transforms and the official ``fillcolor=128``, which PIL reads as the
    colour (128, 0, 0) on RGB images); their random draws come from torch. Views are drawn from
    ``self.generator``; the per-image weight restore does not rewind it, so every image gets fresh views.

    Example::

        m = create_method("memo", model)     # 32 views, SGD lr 0.005, 1 step
        logits = m(x)                         # (B, K), each image adapted from the source weights
    """

    paper = 'Zhang et al., "MEMO: Test Time Robustness via Adaptation and Augmentation", NeurIPS 2022'
    Config = MEMOConfig
    requirements = Requirements(adapts="all parameters, reset to the source for every image", views="augmix")
    default_order = "after"

    @classmethod
    def example_config(cls) -> MEMOConfig:
        """Contract-test config: 4 views per image (the paper's 32 stay the default)."""
        return MEMOConfig(n_views=4)

    def check_model(self, model: torch.nn.Module) -> None:
        if self.config.n_views < 1:
            raise ValueError(f"memo: n_views must be >= 1, got {self.config.n_views}")

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(True)

    def restore_source(self) -> None:
        """Source weights and fresh optimiser state (not the generator: views stay fresh per image)."""
        assert self._snapshot is not None
        self.load_state_dict(self._snapshot["state"], strict=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optim"]))

    def step(self, x: torch.Tensor, order: Order | None = None) -> torch.Tensor:
        """Adapt and predict every image of ``x`` on its own, from the source weights (episodic per image)."""
        self.check_batch(x)
        outs = []
        for i in range(x.shape[0]):
            self.restore_source()
            outs.append(super().step(x[i:i + 1], order))  # (1, K)
        return torch.cat(outs)  # (B, K)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = augmix_views(x[0], self.config.n_views, self.generator, self.config.augmix)  # (n, C, H, W)
        loss, _ = marginal_entropy(self.model(views))
        with torch.no_grad():
            logits = self.model(x)  # (1, K): the prediction before the update
        return loss, logits

"""``nc-ttt``: NC-TTT, test-time training with a noise-contrastive auxiliary task.

Osowiechi, Vargas Hakim, Noori, Cheraghalikhani, Bahri, Yazdanpanah, Ben Ayed, Desrosiers, "NC-TTT:
A Noise Contrastive Approach for Test-Time Training", CVPR 2024 (official code:
GustavoVargasHakim/NCTTT, ``models/simplenet.py``, ``adapt.py``, ``utils/utils.py``).

Source time: the output of one encoder layer goes through a projector (1x1 convolution to E
channels); Gaussian noise of a high (0.1) or a low (0.015) standard deviation is added to the
projected map, and a per-position discriminator learns which level it is, with soft targets from the
likelihood ratio of the two Gaussians (:mod:`testtime.losses.noise_contrastive`); trained jointly with
the classifier: ``CE + weight * BCE``. Test time: the discriminator scores the clean projected
features of the test batch and the encoder (stem up to ``extract_layer``, the probed layer) is
updated so that they look like low-noise features (``softplus`` of the scores); projector,
discriminator and classifier are frozen; the batch is then predicted.

What matches the official code: the probed layer (``layer1``, official ``--layers 1``), the projector
``Conv2d(C, 1536, 1)`` and the discriminator ``Conv2d(E, 4, 1) - BatchNorm2d - LeakyReLU(0.2) -
Conv2d(4, 1, 1)`` with Xavier-normal weights, the stds 0.1 / 0.015 (``--std``, ``--std2``) and the
soft targets (posteriors below 1e-6 set to 0), the test loss ``BCE(sigmoid(-d(f)), 1)``, Adam lr
1e-5 on ``conv1 .. layer1`` (``get_part(model, layers[-1])``), 50 iterations (``--niter``), the source
weights and a fresh optimiser for every batch (here: the episodic protocol), the whole network in
train mode while adapting (BN follows the test batch, the discriminator's BN included) and eval mode
to predict. Differences, on purpose:

- The official noise is drawn per image, then multiplied by a one-hot of ONE class and summed over
  dimension 1; with the 4-D noise this broadcasts to (B, B, D, H, W) and sums over the batch, so every
  image of a batch gets the same noise map, the sum of B draws (standard deviation ``std * sqrt(B)``,
  about 11x the stated value at batch 128). Here every image and position gets its own draw with the
  stated standard deviations; the soft targets use the noise actually added, as in the official code.
- BCE is computed from the logits (``binary_cross_entropy_with_logits``) rather than from
  ``sigmoid`` probabilities clamped at log 1e-100: the same values where both are finite.
- Source training uses the project's one trainer (Adam, cosine schedule) instead of SGD 1e-3.

Example::

    model = ...  # testtime train nc-ttt
    method = create_method("nc-ttt", model)        # Adam lr 1e-5, 50 steps, stem..layer1 updated
    logits = method(x)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from testtime.losses.noise_contrastive import high_noise_posterior, low_noise_loss, noise_discrimination_loss
from testtime.methods._layer_heads import LayerHeadTTT, LayerTTTConfig
from testtime.methods.base import register_method


@dataclass(frozen=True)
class NCTTTHeadConfig:
    """NC-TTT's source-time projector and discriminator (official CIFAR defaults)."""

    layer: int = 1  # the probed stage (official --layers 1: the output of layer1)
    embed_dim: int = 1536  # projector channels E (official --embed-size)
    hidden: int = 4  # discriminator hidden channels (official Discriminator(hidden=4))
    std_high: float = 0.1  # official --std
    std_low: float = 0.015  # official --std2
    weight: float = 1.0  # weight of the discrimination loss beside CE (official --weight)

    def __post_init__(self) -> None:
        if self.layer < 1 or self.embed_dim < 1 or self.hidden < 1:
            raise ValueError(f"layer, embed_dim and hidden must be >= 1, got {self.layer}, {self.embed_dim}, "
                             f"{self.hidden}")
        if not 0 < self.std_low < self.std_high:
            raise ValueError(f"noise stds must satisfy 0 < std_low < std_high, got std_low={self.std_low}, "
                             f"std_high={self.std_high}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class NCTTTConfig(LayerTTTConfig):
    """NC-TTT's test-time settings (official ``adapt.py`` defaults): the encoder up to the probed layer."""

    extract_layer: int = 1


def _xavier(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.xavier_normal_(m.weight)


class NoiseDiscriminator(nn.Module):
    """Projector ``Conv2d(C_l, E, 1)`` on stage ``layer`` and discriminator ``E -> hidden -> 1`` per position."""

    def __init__(self, stage_dims: tuple[int, ...], cfg: NCTTTHeadConfig) -> None:
        super().__init__()
        if cfg.layer > len(stage_dims):
            raise ValueError(f"layer {cfg.layer}: the encoder has {len(stage_dims)} stages")
        self.cfg = cfg
        self.projector = nn.Conv2d(stage_dims[cfg.layer - 1], cfg.embed_dim, 1)
        self.discriminator = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.hidden, 1), nn.BatchNorm2d(cfg.hidden), nn.LeakyReLU(0.2),
            nn.Conv2d(cfg.hidden, 1, 1),
        )
        self.apply(_xavier)

    def project(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.projector(feats[self.cfg.layer - 1])  # (B, E, H, W)

    def source_loss(self, feats: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
        """BCE of the discriminator on high- and low-noise copies of the projected map, soft targets."""
        f = self.project(feats)
        c = self.cfg
        n_high = torch.randn(f.shape, generator=g).to(f) * c.std_high  # (B, E, H, W)
        n_low = torch.randn(f.shape, generator=g).to(f) * c.std_low
        noise = torch.cat([n_high, n_low])  # (2B, E, H, W)
        targets = high_noise_posterior(noise, c.std_high, c.std_low)  # (2B, H, W)
        scores = self.discriminator(f.repeat(2, 1, 1, 1) + noise)[:, 0]  # (2B, H, W)
        return noise_discrimination_loss(scores, targets)

    def test_loss(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Push the clean projected features to the low-noise side: mean softplus of their scores."""
        return low_noise_loss(self.discriminator(self.project(feats)))


@register_method("nc-ttt", aliases=("ncttt",))
class NCTTT(LayerHeadTTT):
    """NC-TTT (Osowiechi et al., CVPR 2024): a noise-level discriminator on projected layer-1 features;
    at test time the encoder up to that layer makes clean features look low-noise (Adam lr 1e-5)."""

    Config = NCTTTConfig
    HeadConfig = NCTTTHeadConfig
    head_what = "noise projector and discriminator"
    Heads = NoiseDiscriminator

    @classmethod
    def example_head_config(cls) -> NCTTTHeadConfig:
        """Contract-test heads: 16 projector channels (the paper's 1536 stay the default)."""
        return NCTTTHeadConfig(embed_dim=16)

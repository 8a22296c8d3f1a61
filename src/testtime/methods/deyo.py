"""``deyo``: destroy your object: entropy + PLPD sample selection and reweighting.

Lee, Jung, Lee, Park, Shin, Lee and Yoon, "Entropy is not Enough for Test-Time Adaptation: From the
Perspective of Disentangled Factors", ICLR 2024 (official code: Jhyun17/DeYO, ``methods/deyo.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testtime.losses.entropy import softmax_entropy
from testtime.methods.base import Method, MethodConfig, Requirements, register_method
from testtime.methods.sar import check_norm_layers, configure_norm_adaptation, trainable_model_params
from testtime.methods.tent import confident_example_model

AUG_TYPES = ("patch", "pixel")


@dataclass(frozen=True)
class DeYOConfig(MethodConfig):
    """DeYO's defaults (Jhyun17/DeYO ``main.py`` argparse).

    - ``e_margin_scale``: tau_Ent = 0.5 ln C, the entropy threshold of the selection (Eq. 8).
    - ``e0_scale``: Ent_0 = 0.4 ln C, the entropy margin of the weights (Eq. 10).
    - ``plpd_threshold``: tau_PLPD = 0.2, the PLPD threshold of the selection (Eq. 8; the official
      scripts use 0.3 for ResNet-50-BN on ImageNet-C in the mild setting, 0.2 in the wild settings).
    - ``aug_type``: the object-destructive transformation: ``"patch"`` (shuffle a ``patch_len`` x
      ``patch_len`` grid of patches, per image; default, 4) or ``"pixel"`` (one random permutation of the
      pixel positions shared by the batch, as the code).
    - ``filter_ent`` / ``filter_plpd`` / ``reweight_ent`` / ``reweight_plpd``: the ablation switches (all on).
    - optimiser: SGD, lr 0.00025, momentum 0.9, one step per batch (batch 64).
    - ``exclude``: norm layers left frozen, as the code (the top stage: ``layer4`` of a ResNet-50,
      ``encoder.layers.3.`` in this package's 4-stage ResNets; nothing in the 3-stage CIFAR ResNets).
    """

    steps: int = 1
    lr: float = 0.00025
    optimizer: str = "sgd"
    momentum: float = 0.9
    e_margin_scale: float = 0.5
    e0_scale: float = 0.4
    plpd_threshold: float = 0.2
    aug_type: str = "patch"
    patch_len: int = 4
    filter_ent: bool = True
    filter_plpd: bool = True
    reweight_ent: bool = True
    reweight_plpd: bool = True
    exclude: tuple[str, ...] = ("layer4", "encoder.layers.3.")


def patch_shuffle(x: torch.Tensor, patch_len: int, generator: torch.Generator) -> torch.Tensor:
    """Cut each image of ``x`` (B, C, H, W) into a ``patch_len`` x ``patch_len`` grid and permute the
    patches at random, one permutation per image (DeYO's default object-destructive transformation).
    Sizes not divisible by ``patch_len`` are resized (bilinear) to the nearest lower multiple and back."""
    b, c, h, w = x.shape
    hh, ww = (h // patch_len) * patch_len, (w // patch_len) * patch_len
    y = x if (hh, ww) == (h, w) else F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False)
    ph, pw = hh // patch_len, ww // patch_len
    n = patch_len * patch_len
    patches = y.reshape(b, c, patch_len, ph, patch_len, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, ph, pw)
    perm = torch.rand(b, n, generator=generator).argsort(dim=1).to(x.device)  # (B, n)
    patches = patches[torch.arange(b, device=x.device).unsqueeze(1), perm]
    y = patches.reshape(b, patch_len, patch_len, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
    return y if (hh, ww) == (h, w) else F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


def pixel_shuffle(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute the pixel positions of ``x`` (B, C, H, W) with one random permutation shared by the batch."""
    b, c, h, w = x.shape
    perm = torch.randperm(h * w, generator=generator).to(x.device)
    return x.reshape(b, c, h * w)[:, :, perm].reshape(b, c, h, w)


@register_method("deyo")
class DeYO(Method):
    """DeYO (Lee et al., ICLR 2024): entropy minimisation over the affine parameters of the norm layers
    (BN on test-batch statistics; GN/LN too, as the official code), on samples selected by two
    criteria (Eq. 8): low entropy, Ent(x) < tau_Ent = 0.5 ln C, and a large pseudo-label probability
    difference ``PLPD = p_yhat(x) - p_yhat(x')`` > tau_PLPD = 0.2, where yhat = argmax p(x) and x' is x
    with its patches shuffled (the object is destroyed, its shape cue lost: Eq. 7). Each selected
    sample's entropy is weighted (Eq. 10) by ``exp(-(Ent(x) - Ent_0)) + exp(PLPD)`` with Ent_0 = 0.4 ln C
    (weights detached), and the loss is their mean; one SGD step per batch. x' goes through the model
    without gradient. As in the official code, batches where no sample survives both filters make no
    update, and predictions are those of the adaptation forward pass (before the update). The patch
    permutations are drawn from ``self.generator`` (seeded; replayed by ``reset()``).

    Example::

        m = create_method("deyo", model)
        logits = m(x)
        m.last_reliable, m.last_selected   # samples kept by the entropy filter, then by PLPD
    """

    paper = ('Lee et al., "Entropy is not Enough for Test-Time Adaptation: From the Perspective of '
             'Disentangled Factors", ICLR 2024')
    Config = DeYOConfig
    requirements = Requirements(adapts="norm-layer affine (BN/GN/LN gamma, beta); BN uses test-batch statistics")
    default_order = "before"

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        """A ResNet-8 with a sharpened head, so that some samples pass the entropy filter."""
        return confident_example_model(num_classes, in_chans)

    def check_model(self, model: nn.Module) -> None:
        check_norm_layers(model, self.name)
        c = self.config
        if c.aug_type not in AUG_TYPES:
            raise ValueError(f"deyo: aug_type must be one of {', '.join(AUG_TYPES)}; got {c.aug_type!r}")
        if c.patch_len < 2 or c.e_margin_scale <= 0:
            raise ValueError(f"deyo: need patch_len >= 2 and e_margin_scale > 0; got patch_len={c.patch_len}, "
                             f"e_margin_scale={c.e_margin_scale}")

    def configure(self) -> None:
        configure_norm_adaptation(self.model, self.config.exclude, self.name)
        # Diagnostics of the last step (not state).
        self.last_reliable = 0
        self.last_selected = 0

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return trainable_model_params(self, self.model)

    def destroy(self, x: torch.Tensor) -> torch.Tensor:
        """The object-destructive transformation x -> x' of Eq. 7."""
        if self.config.aug_type == "patch":
            return patch_shuffle(x, self.config.patch_len, self.generator)
        return pixel_shuffle(x, self.generator)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        c = self.config
        logits = self.model(x)  # (B, K)
        ln_c = math.log(logits.shape[1])
        ent = softmax_entropy(logits.float())  # (B,)
        sel = ent < c.e_margin_scale * ln_c if c.filter_ent else torch.ones_like(ent, dtype=torch.bool)
        self.last_reliable, self.last_selected = int(sel.sum()), 0
        if not sel.any():
            return None, logits
        with torch.no_grad():
            logits_prime = self.model(self.destroy(x[sel].detach()))  # (R, K)
        probs = logits[sel].detach().float().softmax(1)  # (R, K)
        yhat = probs.argmax(1, keepdim=True)
        plpd = (probs.gather(1, yhat) - logits_prime.float().softmax(1).gather(1, yhat)).squeeze(1)  # (R,)
        keep = plpd > c.plpd_threshold if c.filter_plpd else torch.ones_like(plpd, dtype=torch.bool)
        self.last_selected = int(keep.sum())
        if not keep.any():
            return None, logits
        e, d = ent[sel][keep], plpd[keep]
        weights = c.reweight_ent * torch.exp(-(e.detach() - c.e0_scale * ln_c)) + c.reweight_plpd * torch.exp(d)
        if not (c.reweight_ent or c.reweight_plpd):
            weights = torch.ones_like(e)
        return (weights * e).mean(), logits

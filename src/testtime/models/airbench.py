"""A fast CIFAR backbone in the style of the fastest published CIFAR-10 recipes ("airbench").

Facts taken from Keller Jordan's airbench94 (94% on CIFAR-10 in under 10 epochs on one GPU); the
code is this project's own:

- a 2x2 stem convolution without padding (32 px -> 31 px), 24 output channels, whose weights can be
  initialised from the training images' 2x2 patches as a whitening transform
  (:meth:`AirbenchEncoder.init_whitening`: the eigenvectors of the patch covariance scaled by
  ``1 / sqrt(eigenvalue + eps)``, each with its negation, so 12 directions give 24 channels), then
  GELU;
- three conv groups of widths 64 / 256 / 256, each ``conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3
  -> BN -> GELU`` (31 -> 15 -> 7 -> 3 px);
- a global max pool to a 256-d feature vector, scaled by a fixed 1/9, then one linear classifier.
  airbench94 scales the logits by 1/9; scaling the features instead keeps h a plain linear layer
  (the f / h split of CTA) and gives the same training dynamics (the same gradients reach the
  encoder and the classifier's weights).

Differences from airbench94, so that the model fits this project's f / h split and its test-time
methods: the classifier has a bias; BN layers have affine weights (airbench has no BN scale, fixed
at 1); BN momentum is PyTorch's default 0.1 (airbench: 0.4 in PyTorch's convention, its
hyperparameter 0.6 being the share of the old running statistics kept), BN eps 1e-5 (airbench:
1e-12); the convolutions keep PyTorch's initialisation unless ``model.conv_init="dirac"``
(airbench's identity init, :mod:`testtime.models.init`); no test-time flip/translate averaging.
The training recipe is the ``cifar10-cpu`` preset's: Nesterov SGD, crop + flip, Cutout, airbench's
Lookahead EMA and its parameter groups (the BN scales frozen, the BN biases at 64x the learning rate:
``frozen_params``, ``bn_bias_lr_scale`` of :class:`testtime.train.trainer.TrainConfig`). airbench also
freezes the whitening stem's weights; the preset trains them, because a frozen stem keeps amplifying
the high-frequency patch directions (filter norms up to 35) and the model then falls to chance on
noise corruptions (docs/results.md, "Attempt 8": 90.02% clean, 10-13% on Gaussian, shot and impulse
noise at severity 5).

Like every backbone here: images in [0, 1] (B, C, H, W), normalisation inside the model,
``encoder(x)`` -> (B, 256) features, ``fc`` the linear head h.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from testtime.models.resnet import CIFAR10_MEAN, CIFAR10_STD, Normalize


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (halves the resolution)."""

    def __init__(self, cin: int, cout: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class AirbenchEncoder(nn.Module):
    """Images in [0, 1] (B, C, H, W) -> features (B, widths[-1]): normalise, 2x2 stem, 3 groups, max pool."""

    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        in_chans: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        norm: type[nn.Module] = nn.BatchNorm2d,
        stem_channels: int | None = None,
        feature_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if len(mean) != in_chans:
            raise ValueError(f"mean/std have {len(mean)} channels but in_chans={in_chans}")
        if stem_channels is None:  # airbench's 24 for RGB; 2 x the patch size for grey images
            stem_channels = min(24, 2 * in_chans * 4)
        if stem_channels % 2 or stem_channels > 2 * in_chans * 4:
            raise ValueError(
                f"stem_channels must be even and at most {2 * in_chans * 4} (2 x the 2x2 patch size), "
                f"got {stem_channels}"
            )
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_chans, stem_channels, 2, padding=0, bias=True)
        groups = []
        cin = stem_channels
        for w in widths:
            groups.append(ConvGroup(cin, w, norm))
            cin = w
        self.layers = nn.Sequential(*groups)
        self.out_dim = cin
        self.stage_dims = tuple(widths)  # C_i of each group's output
        self.feature_scale = feature_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of ``images`` (float (N, C, H, W) in [0, 1]).

        The weights become ``[V / sqrt(lambda + eps), -V / sqrt(lambda + eps)]`` for the top
        ``stem_channels / 2`` eigenpairs (lambda, V) of the covariance of the normalised patches;
        the bias is zeroed. Deterministic for given images.
        """
        if images.ndim != 4 or images.shape[1] != self.stem.in_channels or not images.is_floating_point():
            raise ValueError(
                f"images: expected float (N, {self.stem.in_channels}, H, W) in [0, 1], got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        x = self.normalize(images.to(self.stem.weight.device, torch.float64).float()).double()
        c = x.shape[1]
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H-1, W-1, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4)  # (P, C*4)
        patches = patches - patches.mean(0, keepdim=True)
        cov = patches.T @ patches / max(1, patches.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        k = self.stem.out_channels // 2
        evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]  # (k,), (C*4, k)
        w = (evecs / torch.sqrt(evals.clamp_min(0) + eps)).T.reshape(k, c, 2, 2)
        self.stem.weight.copy_(torch.cat([w, -w]).to(self.stem.weight.dtype))
        self.stem.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.stage_outputs(x)[-1])  # (B, D)

    def stage_outputs(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Feature maps after each conv group, the first ``upto`` of them (all by default): a list of
        (B, C_i, H_i, W_i), the stages that intermediate-layer heads (ClusT3, NC-TTT, ReC-TTT) read."""
        x = F.gelu(self.stem(self.normalize(x)))
        outs = []
        for group in list(self.layers)[: len(self.layers) if upto is None else upto]:
            x = group(x)
            outs.append(x)
        return outs

    def pool_features(self, last: torch.Tensor) -> torch.Tensor:
        """The last group's map (B, D, h, w) -> the feature vector (B, D) of ``forward``: global max pool
        times ``feature_scale``."""
        return torch.flatten(F.adaptive_max_pool2d(last, 1), 1) * self.feature_scale

    def stem_modules(self) -> tuple[nn.Module, ...]:
        """The trainable modules before group 1 (the 2x2 ``stem``)."""
        return (self.stem,)


_SPECS = {
    "airbench": lambda **kw: AirbenchEncoder((64, 256, 256), **kw),
    "airbench-small": lambda **kw: AirbenchEncoder((32, 64, 64), **kw),
}

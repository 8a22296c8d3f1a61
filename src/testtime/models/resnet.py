"""CIFAR-style ResNets as the TTT / TTT++ / CTA lineage uses them.

3x3 stride-1 stem, no max-pool, global average pool, then one linear classifier ``fc``.
Normalisation lives inside the model (``Normalize``), so inputs are float images in [0, 1],
(B, C, H, W).

- ``resnet8/20/26``: He et al. (2016) CIFAR ResNets, 6n+2 layers, widths 16/32/64 (x ``width``),
  BasicBlocks, feature size 64 * width. Small and CPU-friendly.
- ``resnet18/50``: ImageNet ResNet widths (64..512, BasicBlock / Bottleneck) with the CIFAR stem,
  as in vita-epfl/ttt-plus-plus ``BigResNet``; feature size 512 / 2048.

Every model is a :class:`ResNet` whose ``encoder`` maps images to features (B, D) and whose
``fc`` maps features to logits (B, K): the f / h split of the CTA paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers saved with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm: type[nn.Module]) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class Encoder(nn.Module):
    """Images in [0, 1] (B, C, H, W) -> features (B, out_dim): normalise, stem, stages, pool."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        widths: Sequence[int],
        in_chans: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        norm: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(mean) != in_chans:
            raise ValueError(f"mean/std have {len(mean)} channels but in_chans={in_chans}")
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm(widths[0])
        stages = []
        cin = widths[0]
        for i, (d, w) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(d):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, w, stride, norm))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.out_dim = cin
        self.stage_dims = tuple(w * block.expansion for w in widths)  # C_i of each stage's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.stage_outputs(x)[-1])  # (B, D)

    def pool_features(self, last: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D, h, w) -> the feature vector (B, D) of ``forward``: global average pool."""
        return torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)

    def stem_modules(self) -> tuple[nn.Module, ...]:
        """The trainable modules before stage 1 (``conv1``, ``bn1``)."""
        return (self.conv1, self.bn1)

    def stage_outputs(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Feature maps after each stage (``layer1``, ``layer2``, ... of the ResNet papers), the first
        ``upto`` of them (all by default): a list of (B, C_i, H_i, W_i). Auxiliary heads on
        intermediate layers (ClusT3, NC-TTT) read them."""
        x = self.normalize(x)
        x = F.relu(self.bn1(self.conv1(x)))
        outs = []
        for stage in list(self.layers)[: len(self.layers) if upto is None else upto]:
            x = stage(x)
            outs.append(x)
        return outs


class ResNet(nn.Module):
    """``fc(encoder(x))``: images in [0, 1] (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def _cifar_resnet(n: int, width: int = 1, **kw) -> Encoder:
    return Encoder(BasicBlock, [n, n, n], [16 * width, 32 * width, 64 * width], **kw)


_SPECS = {
    "resnet8": lambda **kw: _cifar_resnet(1, **kw),
    "resnet20": lambda **kw: _cifar_resnet(3, **kw),
    "resnet26": lambda **kw: _cifar_resnet(4, **kw),
    "resnet18": lambda **kw: Encoder(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], **kw),
    "resnet50": lambda **kw: Encoder(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], **kw),
}

"""``rotta``: robust BN, a category-balanced memory bank and a timeliness-weighted EMA teacher.

Yuan, Xie and Li, "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023 (official code:
BIT-DA/RoTTA, ``core/adapter/rotta.py``, ``core/utils/memory.py``, ``core/utils/bn_layers.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from testtime.losses.entropy import soft_cross_entropy
from testtime.methods._state import GrowingState
from testtime.methods.base import Method, MethodConfig, Requirements, batchnorm_layers, register_method
from testtime.transforms.cotta_aug import CoTTAAugConfig, cotta_augment


@dataclass(frozen=True)
class RoTTAConfig(MethodConfig):
    """RoTTA's defaults (BIT-DA/RoTTA ``configs/adapter/rotta.yaml`` and ``core/configs/defaults.py``).

    - ``alpha``: the RBN momentum of the global statistics (0.05).
    - ``nu``: the teacher's EMA rate, ``teacher <- (1 - nu) teacher + nu student`` (0.001).
    - ``memory_size``: N, the capacity of the CSTU memory bank (64).
    - ``update_every``: an update every 64 test samples (the memory size).
    - ``lambda_t`` / ``lambda_u``: the weights of timeliness and uncertainty in the eviction score (1, 1).
    - ``aug``: the student's strong augmentation (CoTTA's, which RoTTA's ``get_tta_transforms`` copies).
    - optimiser: Adam, lr 1e-3, betas (0.9, 0.999), no weight decay; batch size 64.
    """

    steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    alpha: float = 0.05
    nu: float = 0.001
    memory_size: int = 64
    update_every: int = 64
    lambda_t: float = 1.0
    lambda_u: float = 1.0
    aug: CoTTAAugConfig = field(default_factory=CoTTAAugConfig)


class RobustBN(nn.Module):
    """RBN (RoTTA Section 3.2): normalises with global statistics kept as an exponential moving average.

    In training mode, with the batch's (biased) mean and variance ``mu_t, s2_t`` over all dimensions but
    the channel: ``mu <- (1 - alpha) mu + alpha mu_t`` and ``s2 <- (1 - alpha) s2 + alpha s2_t``, and the
    batch is normalised with the *updated* ``mu, s2`` (gradients flow through ``mu_t, s2_t``). In eval
    mode the stored ``mu, s2`` are used. Starts from the BN layer's running statistics and reuses its
    affine parameters. Works for BatchNorm1d/2d/3d inputs.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, alpha: float) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("method 'rotta' needs BatchNorm layers with running statistics "
                             "(track_running_stats=True) to start its robust BN from")
        self.alpha = alpha
        self.eps = bn.eps
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.ndim - 2)
        if self.training:
            dims = [0] + list(range(2, x.ndim))
            b_var, b_mean = torch.var_mean(x, dim=dims, unbiased=False)  # (C,)
            mean = (1 - self.alpha) * self.running_mean + self.alpha * b_mean
            var = (1 - self.alpha) * self.running_var + self.alpha * b_var
            self.running_mean.copy_(mean.detach())
            self.running_var.copy_(var.detach())
        else:
            mean, var = self.running_mean, self.running_var
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


def replace_batchnorm(model: nn.Module, alpha: float) -> None:
    """Swap every BatchNorm layer of ``model`` for a :class:`RobustBN` (in place)."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, RobustBN(child, alpha))
        else:
            replace_batchnorm(child, alpha)


def timeliness_weight(age: torch.Tensor) -> torch.Tensor:
    """RoTTA's timeliness reweighting (Eq. 10): ``exp(-a) / (1 + exp(-a))`` for normalised ages a."""
    return torch.exp(-age) / (1 + torch.exp(-age))


@register_method("rotta")
class RoTTA(Method):
    """RoTTA (Yuan et al., CVPR 2023), robust test-time adaptation for correlated (non-i.i.d.) streams.

    - Robust BN (:class:`RobustBN`, alpha = 0.05) replaces every BN layer of the model (the model given
      is changed, as every method here adapts the model it wraps); only its affine parameters train.
    - A teacher, a copy of the student, predicts each test batch (eval mode, global statistics); these
      are the returned logits. Its pseudo-label and entropy (with ``log(p + 1e-6)``) go with each image
      into the category-balanced memory bank CSTU (capacity N = 64, Algorithm 1): an image of class k
      enters if class k holds fewer than N/C images and the bank is not full; otherwise it replaces the
      item of highest score ``lambda_t / (1 + exp(-age/N)) + lambda_u H / ln C`` among the majority
      classes (or among class k when k already holds N/C), if that score exceeds its own; every
      stored item ages by one per incoming image.
    - Every 64 test images, the student (train mode) sees the strongly augmented memory and the teacher
      (train mode, which updates its RBN statistics) the memory as it is; the loss is the cross-entropy
      to the teacher's soft prediction, weighted by the timeliness of each item (Eq. 9-10), one Adam
      step; then ``teacher <- (1 - nu) teacher + nu student`` over the parameters (nu = 0.001).

    As in the official code, the update happens inside the batch, after the image that completes a
    group of 64 (so a batch of 64 makes exactly one update after all its images are stored), memory
    items are used class by class in insertion order, and the augmentation draws one set of random
    parameters per call (from ``self.generator``). Memory, counters, teacher and RBN statistics are
    declared state, restored by ``reset()``. Any batch size (the memory decouples updates from it).

    Example::

        m = create_method("rotta", model)
        logits = m(x)      # teacher predictions; memory updated, a student step every 64 images
    """

    paper = 'Yuan et al., "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023'
    Config = RoTTAConfig
    requirements = Requirements(
        adapts="robust-BN affine (gamma, beta) and global statistics; EMA teacher; memory bank",
        needs_bn=True,
        views="cotta-aug",
    )
    default_order = "before"

    @classmethod
    def example_config(cls) -> RoTTAConfig:
        """A small memory updated every 4 images, so that the contract tests' batches of 8 update."""
        return RoTTAConfig(memory_size=8, update_every=4)

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        c = self.config
        if c.steps != 1 or c.memory_size < 1 or c.update_every < 1:
            raise ValueError(f"rotta: need steps == 1, memory_size >= 1, update_every >= 1; got steps={c.steps}, "
                             f"memory_size={c.memory_size}, update_every={c.update_every}")
        if not (0 <= c.alpha <= 1 and 0 <= c.nu <= 1):
            raise ValueError(f"rotta: need 0 <= alpha <= 1 and 0 <= nu <= 1; got alpha={c.alpha}, nu={c.nu}")
        for bn in batchnorm_layers(model):
            if bn.running_mean is None:
                raise ValueError("method 'rotta' needs BatchNorm layers with running statistics "
                                 "(track_running_stats=True) to start its robust BN from")

    def configure(self) -> None:
        self.model.requires_grad_(False)
        replace_batchnorm(self.model, self.config.alpha)
        for m in self.model.modules():
            if isinstance(m, RobustBN):
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.requires_grad_(True)
        self.model.eval()
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("method 'rotta' needs a classifier ending in an nn.Linear layer (to size the "
                             "class-balanced memory); the model has none")
        self.num_classes = int(linears[-1].out_features)
        # Declared state: the teacher, the memory (images, pseudo-labels, entropies, ages; insertion
        # order) and the number of test images seen.
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        dev = self.model_device
        self.memory = GrowingState(data=torch.zeros(0, device=dev), labels=torch.zeros(0, dtype=torch.long, device=dev),
                                   unc=torch.zeros(0, device=dev), age=torch.zeros(0, dtype=torch.long, device=dev))
        self.register_state("seen", torch.zeros((), dtype=torch.long))
        self.updates = 0  # diagnostic, not state

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        return [(f"model.{n}", p) for n, p in self.model.named_parameters() if p.requires_grad]

    def adapted_parameter_names(self) -> list[str]:
        """Student RBN affine parameters (gradient) and every teacher parameter (EMA)."""
        return [n for n, _ in self.params()] + [f"teacher.{n}" for n, _ in self.teacher.named_parameters()]

    # ----- CSTU memory bank (Algorithm 1) -----------------------------------------------------
    def score(self, age: float, unc: float) -> float:
        c = self.config
        return c.lambda_t / (1 + math.exp(-age / c.memory_size)) + c.lambda_u * unc / math.log(self.num_classes)

    def _evict(self, classes: list[int], new_score: float) -> bool:
        """Remove the highest-score item of ``classes`` if it scores above ``new_score``; True if room was made."""
        labels, ages, uncs = self.memory.labels.tolist(), self.memory.age.tolist(), self.memory.unc.tolist()
        best, best_score = None, None
        for k in classes:  # class by class, items in insertion order; the last of equal maxima wins
            for i in (i for i, lab in enumerate(labels) if lab == k):
                s = self.score(ages[i], uncs[i])
                if best_score is None or s >= best_score:
                    best, best_score = i, s
        if best is None:
            return True
        if best_score <= new_score:
            return False
        keep = torch.arange(len(labels), device=self.memory.labels.device) != best
        mem = self.memory
        mem.data, mem.labels, mem.unc, mem.age = mem.data[keep], mem.labels[keep], mem.unc[keep], mem.age[keep]
        return True

    @torch.no_grad()
    def add_to_memory(self, x: torch.Tensor, label: int, unc: float) -> None:
        """Offer one image ``x`` (C, H, W) with its pseudo-label and uncertainty to the bank, then age it."""
        mem, cap = self.memory, self.config.memory_size
        labels = mem.labels.tolist()
        new_score = self.score(0, unc)
        if labels.count(label) < cap / self.num_classes:
            if len(labels) < cap:
                room = True
            else:
                counts = [labels.count(k) for k in range(self.num_classes)]
                room = self._evict([k for k in range(self.num_classes) if counts[k] == max(counts)], new_score)
        else:
            room = self._evict([label], new_score)
        if room:
            mem.data = torch.cat([mem.data, x[None]]) if mem.data.ndim > 1 else x[None].clone()
            mem.labels = torch.cat([mem.labels, mem.labels.new_tensor([label])])
            mem.unc = torch.cat([mem.unc, mem.unc.new_tensor([unc])])
            mem.age = torch.cat([mem.age, mem.age.new_zeros(1)])
        mem.age += 1

    def memory_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored images (M, C, H, W) class by class, and their ages divided by the capacity (M,)."""
        order = torch.sort(self.memory.labels, stable=True).indices
        return self.memory.data[order], self.memory.age[order].float() / self.config.memory_size

    # ----- the step ---------------------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """Teacher prediction, memory insertion image by image, an update after every ``update_every``."""
        self.model.eval()
        self.teacher.eval()
        with torch.no_grad():
            logits = self.teacher(x)  # (B, K)
            p = logits.float().softmax(1)
            labels = p.argmax(1).tolist()
            uncs = (-(p * torch.log(p + 1e-6)).sum(1)).tolist()
        for i in range(x.shape[0]):
            self.add_to_memory(x[i].detach(), labels[i], uncs[i])
            self.seen += 1
            if int(self.seen) % self.config.update_every == 0:
                self.update_model()
        return None, logits

    def update_model(self) -> None:
        """One student step on the memory (Eq. 9-10), then the teacher's EMA."""
        assert self.optimizer is not None
        self.model.train()
        self.teacher.train()
        data, ages = self.memory_batch()
        strong = cotta_augment(data, self.generator, self.config.aug)
        with torch.no_grad():
            teacher_out = self.teacher(data)  # updates the teacher's RBN statistics
        student_out = self.model(strong)
        loss = (soft_cross_entropy(student_out.float(), teacher_out.float()) * timeliness_weight(ages)).mean()
        if not torch.isfinite(loss):
            self.nonfinite_steps += 1
            return
        self.optimizer_step(loss)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            nu = self.config.nu
            for tp, sp in zip(self.teacher.parameters(), self.model.parameters()):
                tp.mul_(1 - nu).add_(sp.detach(), alpha=nu)
        self.updates += 1

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits in eval mode (the model RoTTA predicts with)."""
        self.teacher.eval()
        return self.teacher(x)

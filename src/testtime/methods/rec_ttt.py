"""``rec-ttt``: ReC-TTT, test-time training by cross-reconstruction of a frozen teacher's features.

Colussi, Mascetti, Dolz, Desrosiers, "ReC-TTT: Contrastive Feature Reconstruction for Test-Time
Training", arXiv 2411.17869, 2024 (WACV 2025); official code warpcut/ReC-TTT (``models/recttt.py``
``ReCTTT2``, ``train_recttt.py``, ``utils.evaluation_ttt2_semi``).

Model: two trainable encoders, ``encoder`` on the image x and ``encoder2`` on its horizontal flip, each
with its classifier (``fc``, ``fc2``); a frozen ``teacher`` encoder (on x and on flip(x)); and one
shared ``decoder`` (a bottleneck fusing the three stage outputs, then upsampling blocks, with four
output heads) that cross-reconstructs features at the three stages: from ``encoder(x)`` it
reconstructs ``teacher(x)``, from ``teacher(x)`` it reconstructs ``encoder(x)``, from ``teacher(flip
x)`` it reconstructs ``encoder2(flip x)`` and from ``encoder2(flip x)`` it reconstructs ``teacher(flip
x)`` (one output head per source). The reconstruction loss is the global cosine distance of each
stage's map (targets detached), summed over the three stages, averaged over the four directions
(:mod:`testtime.losses.reconstruction`). Prediction: ``fc(encoder(x)) + fc2(encoder2(flip x))``.

Source time (:class:`ReCTTTObjective`): reconstruction + CE of both classifiers + the symmetric KL
between them; the encoders, the teacher and the classifiers start from one trained classifier (the
official code copies one ImageNet-pretrained ResNet-50 three times; here the preset's ``supervised``
model, as CTA duplicates it); the teacher stays frozen (eval mode). Test time: AdamW (lr 1e-3, weight
decay 1e-5) on both encoders and both classifiers, 10 iterations of the reconstruction loss, the
encoders' stages 1-3 in train mode and everything else in eval mode; then the batch is predicted in
eval mode from the sum of the two heads' logits.

On the project's CIFAR ResNets (and airbench's three conv groups) the "three layers" are the three
stages and the classifiers read the last one; on 4-stage ResNets (resnet18/50) stages 1-3 are
reconstructed and stage 4 feeds the classifiers, as in the official ResNet-50.

Differences from the official code, on purpose or by necessity:

- The decoder: the official one is RD4AD's ``de_resnet50`` (reverse ResNet-50 blocks, not in the
  repository's history stored here); here a compact one of the same shape (stride-2 convolutions
  fuse the three stage maps into an embedding of twice the last stage's channels at half its
  resolution (a strided map that comes out larger than the last stage, as airbench's 15 / 7 / 3 px
  stages do, is average-pooled to its size first), then bilinear upsampling + two 3x3 conv-BN-ReLU
  per stage, and one 3x3 output convolution per stage and source), sized from the encoder's stage
  widths.
- The symmetric KL is taken over the classes (the official ``log_softmax(..., 0)`` is over the batch).
- Hard-example mining of the official source training (``global_cosine_hm``: gradients of
  well-reconstructed positions zeroed, with a warm-up of the threshold) is not reproduced; the plain
  global cosine is used at both times (the official test time uses it too, ``--hm`` off).
- The official test loop restores the weights before every batch but keeps the AdamW moments across
  batches; here the episodic protocol restores both (the optimiser state is part of the reset).
- Source training uses the project's one trainer (Adam, cosine schedule) instead of SGD 0.1.

Example::

    model = ...  # testtime train rec-ttt (starts from the preset's supervised checkpoint)
    method = create_method("rec-ttt", model)       # AdamW lr 1e-3, 10 steps
    logits = method(x)                             # fc(e1(x)) + fc2(e2(flip x)) after adapting on x
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testtime.losses import cross_entropy
from testtime.losses.reconstruction import global_cosine_distance, symmetric_kl
from testtime.methods.base import Method, MethodConfig, Requirements, register_method
from testtime.train.objectives import Objective
from testtime.transforms.views import CropFlipConfig, crop_flip

N_REC = 3  # reconstructed stages
SOURCES = ("encoder(x)", "teacher(x)", "teacher(flip x)", "encoder2(flip x)")  # decoder heads, in order


@dataclass(frozen=True)
class ReCTTTHeadConfig:
    """ReC-TTT's source-time weights (official ``train_recttt.py``: every term with weight 1)."""

    rec_weight: float = 1.0  # reconstruction (aux) loss
    kl_weight: float = 1.0  # symmetric KL between the two classifiers

    def __post_init__(self) -> None:
        if self.rec_weight < 0 or self.kl_weight < 0:
            raise ValueError(f"rec_weight and kl_weight must be >= 0, got {self.rec_weight}, {self.kl_weight}")


@dataclass(frozen=True)
class ReCTTTConfig(MethodConfig):
    """ReC-TTT's test-time settings (official ``test_recttt.py``: AdamW lr 1e-3, wd 1e-5, 10 iterations)."""

    steps: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-5


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CrossDecoder(nn.Module):
    """Bottleneck + decoder shared by the four reconstruction directions, with one output head per source.

    ``forward(feats)``: ``feats`` = the three stage maps of a batch stacked by source, [(4B, C_l, H_l, W_l)]
    (sources in the order of ``SOURCES``); returns ``out[s][l]`` (B, C_l, H_l, W_l): head ``s`` applied
    to source ``s``'s decoded map at stage ``l``.
    """

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        if len(dims) != N_REC:
            raise ValueError(f"the decoder reconstructs {N_REC} stages, got channels {dims}")
        c1, c2, c3 = dims
        self.down = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(c1, c2, 2), _conv_bn_relu(c2, c3, 2)),  # stage 1 -> stage 3's size
            _conv_bn_relu(c2, c3, 2),  # stage 2 -> stage 3's size
            nn.Identity(),
        ])
        self.fuse = _conv_bn_relu(3 * c3, 2 * c3, 2)  # the embedding: 2 C_3 at half stage 3's size
        self.up = nn.ModuleList([  # decoding order: stage 3, 2, 1
            nn.Sequential(_conv_bn_relu(2 * c3, c3), _conv_bn_relu(c3, c3)),
            nn.Sequential(_conv_bn_relu(c3, c2), _conv_bn_relu(c2, c2)),
            nn.Sequential(_conv_bn_relu(c2, c1), _conv_bn_relu(c1, c1)),
        ])
        self.heads = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(c, c, 3, 1, 1) for c in dims) for _ in SOURCES
        )

    def forward(self, feats: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        size = feats[-1].shape[-2:]
        down = [d(f) for d, f in zip(self.down, feats)]
        # odd sizes (airbench: 15 / 7 / 3 px) leave the strided maps larger than stage 3: pool them to its size
        down = [f if f.shape[-2:] == size else F.adaptive_avg_pool2d(f, size) for f in down]
        z = self.fuse(torch.cat(down, 1))  # (4B, 2 C_3, h, w)
        decoded: list[torch.Tensor] = []
        for up, target in zip(self.up, reversed(feats)):
            z = up(F.interpolate(z, size=target.shape[-2:], mode="bilinear", align_corners=False))
            decoded.insert(0, z)  # decoded[l]: (4B, C_l, H_l, W_l)
        chunks = [d.chunk(len(SOURCES)) for d in decoded]
        return [[self.heads[s][lv](chunks[lv][s]) for lv in range(N_REC)] for s in range(len(SOURCES))]


class ReCTTTModel(nn.Module):
    """Two encoders + classifiers, a frozen teacher and the shared decoder; ``forward`` = the summed logits."""

    def __init__(self, encoder: nn.Module, encoder2: nn.Module, teacher: nn.Module, decoder: CrossDecoder,
                 fc: nn.Module, fc2: nn.Module, *, head_config: ReCTTTHeadConfig) -> None:
        super().__init__()
        self.encoder, self.encoder2, self.teacher = encoder, encoder2, teacher
        self.decoder, self.fc, self.fc2 = decoder, fc, fc2
        self.head_config = head_config
        self.method = "rec-ttt"
        teacher.requires_grad_(False)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "encoder2": self.encoder2, "teacher": self.teacher,
                "decoder": self.decoder, "fc": self.fc, "fc2": self.fc2}

    @staticmethod
    def _logits(encoder: nn.Module, fc: nn.Module, last: torch.Tensor) -> torch.Tensor:
        """``fc(encoder(x))`` from the last stage map of ``encoder.stage_outputs(x)``, (B, K)."""
        return fc(encoder.pool_features(last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``fc(encoder(x)) + fc2(encoder2(flip x))``, (B, K): the official prediction (argmax of the sum)."""
        return self.fc(self.encoder(x)) + self.fc2(self.encoder2(hflip(x)))

    def reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction loss, logits of fc on x, logits of fc2 on flip x) in the modules' current modes."""
        s1 = self.encoder.stage_outputs(x)
        s2 = self.encoder2.stage_outputs(hflip(x))
        with torch.no_grad():
            t1 = self.teacher.stage_outputs(x, N_REC)
            t2 = self.teacher.stage_outputs(hflip(x), N_REC)
        srcs = (s1[:N_REC], t1, t2, s2[:N_REC])  # the order of SOURCES
        out = self.decoder([torch.cat([s[lv] for s in srcs]) for lv in range(N_REC)])
        targets = (t1, s1[:N_REC], s2[:N_REC], t2)  # what each source's decoding reconstructs
        rec = sum(global_cosine_distance(t[lv], o[lv]) for t, o in zip(targets, out) for lv in range(N_REC))
        l1 = self._logits(self.encoder, self.fc, s1[-1])
        l2 = self._logits(self.encoder2, self.fc2, s2[-1])
        return rec / len(SOURCES), l1, l2


class ReCTTTObjective(Objective):
    """Source objective: ``rec_weight * L_rec + CE(fc) + CE(fc2) + kl_weight * symKL``, on crop+flip views.

    Everything but the teacher is trained; the teacher stays in eval mode without gradients.
    """

    name = "rec-ttt-joint"

    def __init__(self, model: ReCTTTModel, augment: CropFlipConfig | None = None) -> None:
        mods = model.checkpoint_modules()
        super().__init__(mods, tuple(n for n in mods if n != "teacher"))
        self.model = model
        self.augment = augment if augment is not None else CropFlipConfig()

    def loss(self, x, y, g):
        c = self.model.head_config
        rec, l1, l2 = self.model.reconstruction(crop_flip(x, g, self.augment))
        ce = cross_entropy(l1, y) + cross_entropy(l2, y)
        kl = symmetric_kl(l1, l2)
        loss = c.rec_weight * rec + ce + c.kl_weight * kl
        return loss, {"rec": float(rec.detach()), "ce": float(ce.detach()), "kl": float(kl.detach()),
                      "acc": float(((l1 + l2).argmax(1) == y).float().mean())}


@register_method("rec-ttt", aliases=("recttt",))
class ReCTTT(Method):
    """ReC-TTT (Colussi et al., 2024): AdamW on both encoders and classifiers, minimising the
    cross-reconstruction of a frozen teacher's features; prediction from the sum of the two heads."""

    Config = ReCTTTConfig
    HeadConfig = ReCTTTHeadConfig
    init_from_supervised = True  # testtime train rec-ttt starts from the preset's supervised model
    requirements = Requirements(
        adapts="both encoders and classifiers (stages 1-3 in train mode)", needs_aux_head=True, min_batch_size=1,
    )
    default_order = "after"
    config: ReCTTTConfig

    @classmethod
    def source_model(cls, base: nn.Module, head_config: ReCTTTHeadConfig | None = None) -> ReCTTTModel:
        """Encoder, teacher and classifier copies of ``base`` (a testtime resnet or airbench) and a fresh decoder."""
        head_config = head_config if head_config is not None else ReCTTTHeadConfig()
        encoder = getattr(base, "encoder", None)
        if not hasattr(encoder, "stage_outputs") or len(encoder.stage_dims) < N_REC:
            raise ValueError(f"method {cls.name!r} reconstructs {N_REC} stages: it needs an encoder with "
                             f"stage_outputs (a testtime resnet or airbench from testtime.models.create_model), "
                             f"got {type(base).__name__}")
        decoder = CrossDecoder(tuple(encoder.stage_dims[:N_REC]))
        return ReCTTTModel(encoder, copy.deepcopy(encoder), copy.deepcopy(encoder), decoder, base.fc,
                           copy.deepcopy(base.fc), head_config=head_config)

    @classmethod
    def source_objective(cls, model: ReCTTTModel, augment: CropFlipConfig | None = None) -> ReCTTTObjective:
        return ReCTTTObjective(model, augment)

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        from testtime.models import create_model

        return cls.source_model(create_model("resnet8", num_classes=num_classes, in_chans=in_chans))

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, ReCTTTModel):
            raise ValueError(
                f"method {self.name!r} needs a model with its decoder, teacher and second encoder trained at "
                f"source time (train one with `testtime train {self.name}`, load it with "
                f"testtime.train.peer_stages.load_peer_model); got a plain {type(model).__name__}"
            )
        super().check_model(model)

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        for part in (self.model.encoder, self.model.encoder2, self.model.fc, self.model.fc2):
            part.requires_grad_(True)
        self._first_logits: torch.Tensor | None = None

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._first_logits = None
        return super().adapt(x)

    def _adapt_modes(self) -> None:
        """Official ``test_train([True, True, True, False])``: stages 1-3 of both encoders in train mode."""
        for enc in (self.model.encoder, self.model.encoder2):
            for stage in list(enc.layers)[:N_REC]:
                stage.train()

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction loss on ``x``; logits (B, K) of ``x`` before this call's first step."""
        if self._first_logits is None:
            self._first_logits = self.predict(x)
        self._adapt_modes()
        try:
            rec, _, _ = self.model.reconstruction(x)
        finally:
            self.model.eval()
        return rec, self._first_logits

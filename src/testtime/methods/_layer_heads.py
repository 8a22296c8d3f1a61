"""What ClusT3 and NC-TTT share: auxiliary heads on intermediate encoder layers, trained jointly with
the classifier at source time and used alone at test time to update the encoder up to a layer.

- :class:`LayerHeadModel`: ``encoder`` (a testtime ResNet :class:`~testtime.models.resnet.Encoder` or
  :class:`~testtime.models.airbench.AirbenchEncoder`, whose ``stage_outputs`` gives the feature map after
  every stage), ``fc`` and ``heads``, a module
  with ``source_loss(feats, g)`` (the auxiliary loss of joint training) and ``test_loss(feats)`` (the
  loss minimised at test time), both reading the list of stage outputs ``feats``.
- :class:`LayerHeadObjective`: the joint source objective ``CE(fc(pool(f_L))) + weight *
  heads.source_loss(feats)`` on crop+flip views, for the one trainer :func:`testtime.train.fit`.
- :class:`LayerHeadTTT`: the test-time method: the whole network in train mode (as the official
  ``net.train()`` of both codes: BN normalises with the test batch and its running statistics move
  with momentum 0.1), ``steps`` Adam steps on ``heads.test_loss`` updating the stem and the stages up
  to ``extract_layer`` only (official ``get_part(model, layer)``), then the batch predicted in eval
  mode. Reset every batch = the episodic protocol (weights, BN statistics and Adam state restored).

A method built on these declares ``HeadConfig`` (the source-time head's settings, saved beside the
weights) and ``Heads`` (built as ``Heads(stage_dims, head_config)``); ``testtime train <method>`` trains it
(:mod:`testtime.train.peer_stages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from testtime.losses import cross_entropy
from testtime.methods.base import Method, MethodConfig, Requirements
from testtime.train.objectives import Objective
from testtime.transforms.views import CropFlipConfig, crop_flip


class LayerHeadModel(nn.Module):
    """``forward(x) = fc(encoder(x))`` (logits (B, K)) plus ``heads`` on the encoder's stage outputs.

    Args:
        encoder: a testtime resnet or airbench encoder (``stage_outputs``, ``stage_dims``, ``pool_features``,
            ``stem_modules``).
        fc: the classifier (B, D) -> (B, K).
        heads: the method's auxiliary module (``source_loss``, ``test_loss``).
        method: the registered name of the method the heads belong to.
        head_config: the method's ``HeadConfig`` the heads were built with.
    """

    def __init__(self, encoder: nn.Module, fc: nn.Module, heads: nn.Module, *, method: str, head_config: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = fc
        self.heads = heads
        self.method = method
        self.head_config = head_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The modules a checkpoint of this model holds, by name."""
        return {"encoder": self.encoder, "fc": self.fc, "heads": self.heads}

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after every stage, [(B, C_i, H_i, W_i)]."""
        return self.encoder.stage_outputs(x)

    def logits_from(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``fc(encoder.pool_features(last stage))`` = ``forward(x)`` from ``stage_outputs(x)``."""
        return self.fc(self.encoder.pool_features(feats[-1]))  # (B, K)


class LayerHeadObjective(Objective):
    """Joint source training: ``CE(fc(e(x'))) + weight * heads.source_loss(stages of e(x'))``, x' = crop_flip(x).

    One encoder pass feeds both terms (the official ClusT3 / NC-TTT training forward).
    """

    name = "layer-heads-joint"

    def __init__(self, model: LayerHeadModel, *, weight: float = 1.0, augment: CropFlipConfig | None = None) -> None:
        super().__init__(model.checkpoint_modules(), ("encoder", "fc", "heads"))
        self.model = model
        self.weight = weight
        self.augment = augment if augment is not None else CropFlipConfig()
        self.name = f"{model.method}-joint"

    def loss(self, x, y, g):
        xs = crop_flip(x, g, self.augment)  # (B, C, H, W)
        feats = self.model.stage_outputs(xs)
        logits = self.model.logits_from(feats)  # (B, K)
        ce = cross_entropy(logits, y)
        aux = self.model.heads.source_loss(feats, g)
        loss = ce + self.weight * aux
        return loss, {"ce": float(ce.detach()), "aux": float(aux.detach()),
                      "acc": float((logits.argmax(1) == y).float().mean())}


@dataclass(frozen=True)
class LayerTTTConfig(MethodConfig):
    """Test-time settings shared by ClusT3 and NC-TTT (their official ``adapt`` scripts)."""

    steps: int = 50  # official --niter default
    lr: float = 1e-5  # official --adapt-lr
    optimizer: str = "adam"
    extract_layer: int = 3  # the stem and stages 1..extract_layer are updated (official --extract-layer)

    def __post_init__(self) -> None:
        if self.extract_layer < 1:
            raise ValueError(f"extract_layer must be >= 1 (the stages 1..extract_layer are updated), "
                             f"got {self.extract_layer}")


class LayerHeadTTT(Method):
    """Base of the layer-head methods; see the module docstring. Subclasses set the class attributes."""

    Config = LayerTTTConfig
    HeadConfig: ClassVar[type]  # the source-time heads' settings (saved beside the weights)
    Heads: ClassVar[type]  # the heads module: Heads(stage_dims, head_config)
    head_what: ClassVar[str] = "auxiliary heads"
    requirements = Requirements(
        adapts="encoder stem and stages 1..extract_layer (BN in train mode)", needs_aux_head=True, min_batch_size=1,
    )
    default_order = "after"
    config: LayerTTTConfig

    # ----- what a subclass provides ---------------------------------------------------------
    @classmethod
    def example_head_config(cls) -> Any:
        """A light head for the contract tests (the paper's head stays in ``HeadConfig``)."""
        return cls.HeadConfig()

    # ----- source-time model and objective ----------------------------------------------------
    @classmethod
    def source_model(cls, base: nn.Module, head_config: Any = None) -> LayerHeadModel:
        """``base`` (a testtime resnet or airbench: ``.encoder``, ``.fc``) with fresh heads; shares base's modules."""
        head_config = head_config if head_config is not None else cls.HeadConfig()
        encoder = getattr(base, "encoder", None)
        if not all(hasattr(encoder, a) for a in ("stage_outputs", "stage_dims", "pool_features", "stem_modules")):
            raise ValueError(
                f"method {cls.name!r} puts its heads on intermediate layers: it needs an encoder with "
                f"stage_outputs (a testtime resnet or airbench from testtime.models.create_model), "
                f"got {type(base).__name__}"
            )
        heads = cls.Heads(tuple(encoder.stage_dims), head_config)
        return LayerHeadModel(encoder, base.fc, heads, method=cls.name, head_config=head_config)

    @classmethod
    def source_objective(cls, model: LayerHeadModel, augment: CropFlipConfig | None = None) -> LayerHeadObjective:
        return LayerHeadObjective(model, weight=float(getattr(model.head_config, "weight", 1.0)), augment=augment)

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        from testtime.models import create_model

        return cls.source_model(create_model("resnet8", num_classes=num_classes, in_chans=in_chans),
                                cls.example_head_config())

    # ----- the Method hooks ------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, LayerHeadModel) or model.method != self.name:
            got = f"{model.method!r} heads" if isinstance(model, LayerHeadModel) else f"a plain {type(model).__name__}"
            raise ValueError(
                f"method {self.name!r} needs a model with its {self.head_what} trained at source time "
                f"(train one with `testtime train {self.name}`, load it with "
                f"testtime.train.peer_stages.load_peer_model); got {got}"
            )
        n = len(model.encoder.stage_dims)
        if self.config.extract_layer > n:
            raise ValueError(f"extract_layer must be <= {n} (the encoder's number of stages), "
                             f"got {self.config.extract_layer}")
        super().check_model(model)

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        enc = self.model.encoder
        for part in (*enc.stem_modules(), *list(enc.layers)[: self.config.extract_layer]):
            part.requires_grad_(True)
        self._first_logits: torch.Tensor | None = None

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._first_logits = None
        return super().adapt(x)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' test-time loss on ``x`` in train mode; logits (B, K) of ``x`` before this call's first step."""
        if self._first_logits is None:
            self._first_logits = self.predict(x)  # eval mode, before any update on x
        self.model.train()  # official net.train(): BN uses (and tracks) the test batch's statistics
        try:
            loss = self.model.heads.test_loss(self.model.stage_outputs(x))
        finally:
            self.model.eval()
        return loss, self._first_logits


"""``ttt``: Test-Time Training with rotation prediction (Sun et al., ICML 2020).

Sun, Wang, Liu, Miller, Efros, Hardt, "Test-Time Training with Self-Supervision for Generalization
under Distribution Shifts", ICML 2020. At source time the classifier and a rotation head share an
encoder and are trained jointly (Eq. 2: cross-entropy + rotation loss); at test time, for each test
image, the shared encoder (and the rotation head) take ``steps`` SGD steps on the rotation loss
(Eq. 3) over a batch of ``copies`` augmented copies of that image, each rotated by a random
multiple of 90 degrees; the image is then predicted with the updated classifier. "TTT" restores the
source weights before every image; "TTT-Online" (``online=True``) keeps the updates.

Settings of the official code (yueatsprograms/ttt_cifar_release, ``test_calls/test_adapt.py`` and
``script_test_c10.py``): 32 copies (RandomCrop 32 pad 4 + horizontal flip, then ``rotate_batch
'rand'``), plain SGD (no momentum) lr 1e-3, 10 iterations ("slow", the standard TTT) or 1 ("fast",
"online"), the self-supervised branch in train mode (``ssh.train()``: BN uses the copies' batch
statistics and updates its running statistics; ``fix_bn=True`` keeps it in eval mode), and the
parameters of encoder + rotation head updated (``--fix_ssh`` off). Prediction is in eval mode,
after the update. Not reproduced: the confidence threshold (``--threshold``, default 1 = always
adapt) and the layer-2 branch (see :mod:`testtime.models.heads` for the pooled-feature choice).

Every image of a batch is processed on its own, so results do not depend on the protocol's batch
size; the protocol's resets matter only for ``online=True``.

Example::

    from testtime.models import create_model
    from testtime.models.heads import with_aux_head
    model = with_aux_head(create_model("resnet26", num_classes=10), "rotation")  # then train it jointly
    method = create_method("ttt", model, steps=10)
    logits = method(x)          # (B, K), each image adapted from the source weights
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from testtime.losses.rotation import rotation_loss
from testtime.methods.base import Method, MethodConfig, Order, Requirements, register_method
from testtime.models.heads import AuxHeadModel
from testtime.transforms.rotation import rotate_random
from testtime.transforms.views import CropFlipConfig, crop_flip


@dataclass(frozen=True)
class TTTConfig(MethodConfig):
    """TTT's test-time settings (official code's defaults; ``steps=10`` is the standard "slow" TTT)."""

    steps: int = 10
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.0
    copies: int = 32  # augmented, randomly rotated copies of one test image per step
    online: bool = False  # False: restore the source weights before every image (TTT); True: TTT-Online
    fix_bn: bool = False  # True: BN stays in eval mode while adapting (official --fix_bn)
    update_head: bool = True  # False: only the encoder is updated (official --fix_ssh)
    crop_padding: int = 4

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")


def check_aux_model(method: str, model: nn.Module, task: str, what: str) -> AuxHeadModel:
    """Raise a clear error unless ``model`` is an :class:`AuxHeadModel` with auxiliary task ``task``."""
    if not isinstance(model, AuxHeadModel):
        raise ValueError(
            f"method {method!r} needs a model with {what} trained at source time "
            f"(testtime.models.heads.AuxHeadModel with task={task!r}; train one with `testtime train {method}`), "
            f"got a plain {type(model).__name__}"
        )
    if model.task != task:
        raise ValueError(f"method {method!r} needs an auxiliary {task!r} head ({what}), got a {model.task!r} head")
    return model


@register_method("ttt", aliases=("ttt-rotation",))
class TTT(Method):
    """TTT (Sun et al., ICML 2020): per-image SGD on the rotation-prediction loss of 32 augmented copies."""

    paper = ('Sun et al., "Test-Time Training with Self-Supervision for Generalization under Distribution '
             'Shifts", ICML 2020')

    Config = TTTConfig
    requirements = Requirements(
        adapts="shared encoder + rotation head", needs_aux_head=True, min_batch_size=1, views="rotation"
    )
    default_order = "after"
    config: TTTConfig

    @classmethod
    def example_config(cls) -> TTTConfig:
        """Contract-test config: 2 steps on 8 copies (the paper's 10 steps on 32 copies stay the default)."""
        return TTTConfig(steps=2, copies=8)

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        from testtime.models import create_model
        from testtime.models.heads import with_aux_head

        return with_aux_head(create_model("resnet8", num_classes=num_classes, in_chans=in_chans), "rotation",
                             in_chans=in_chans)

    def check_model(self, model: nn.Module) -> None:
        check_aux_model(self.name, model, "rotation", "a rotation-prediction head")
        super().check_model(model)

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        self.model.encoder.requires_grad_(True)
        if self.config.update_head:
            self.model.aux.requires_grad_(True)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation loss (Eq. 3 of TTT) over ``copies`` augmented, randomly rotated copies of each image."""
        c = self.config
        logits = self.predict(x)  # (B, K), before this update, eval mode
        copies = x.repeat_interleave(c.copies, dim=0)  # (B * copies, C, H, W)
        copies = crop_flip(copies, self.generator, CropFlipConfig(padding=c.crop_padding))
        rotated, labels = rotate_random(copies, self.generator)
        if not c.fix_bn:
            self.model.encoder.train()
            self.model.aux.train()
        try:
            rot_logits = self.model.aux_forward(rotated)  # (B * copies, 4)
        finally:
            self.model.eval()
        return rotation_loss(rot_logits, labels), logits

    def _restore_source_weights(self) -> None:
        """Model weights, BN statistics and optimiser state back to the snapshot (not the generator)."""
        assert self._snapshot is not None
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in self._snapshot["state"].items() if k.startswith(prefix)}
        self.model.load_state_dict(state, strict=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optim"]))

    def step(self, x: torch.Tensor, order: Order | None = None) -> torch.Tensor:
        """Adapt on each image of ``x`` separately; logits (B, K) before or after each image's update."""
        order = order or self.default_order
        if order not in ("before", "after"):
            raise ValueError(f"order must be 'before' or 'after', got {order!r}")
        self.check_batch(x)
        out = []
        for i in range(x.shape[0]):
            if not self.config.online:
                self._restore_source_weights()
            xi = x[i : i + 1]  # (1, C, H, W)
            first = self.adapt(xi)
            if order == "after":
                with self._autocast(xi):
                    first = self.predict(xi).float()
            out.append(first)
        return torch.cat(out, dim=0)  # (B, K)

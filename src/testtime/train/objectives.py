"""Training objectives for every source-time stage, as inputs to the one trainer (:func:`fit`).

An objective owns named modules (everything that is saved), says which parameters the optimiser
updates, puts its modules in the right modes, and computes a loss on a labelled source batch.
New stages (TTT's rotation head, TTT++'s ...) are new objectives; the trainer is unchanged.

=================  ===============================================  ==============================
objective          loss                                             trainable
=================  ===============================================  ==============================
Supervised         CE (Eq. 3) on crop+flip views of h(f(x))         f, h
SimCLR             NT-Xent (Eq. 1, tau 0.01) on pi(g(two views))    g, pi
Align              Eq. 4 (tau 0.5), w = f(x) frozen; optional       g, pi (+ f with a CE term)
                   + lambda * Eq. 1; optional f trainable + CE
LinearProbe        CE of a linear head on frozen features           the head (CTA-C)
Joint (Y model)    CE(h(e(x))) + lambda * Eq. 1 on pi(e(views))     e, h, pi
=================  ===============================================  ==============================

Example::

    obj = SimCLRObjective(encoder=g, projector=pi, tau=0.01)
    fit(obj, train_split, TrainConfig(epochs=1), run_dir="runs/x", name="ssl")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from testtime.losses import cross_encoder_alignment, cross_entropy, nt_xent
from testtime.transforms import CropFlipConfig, SimCLRViewsConfig, crop_flip, simclr_views

_CROP = CropFlipConfig()
_VIEWS = SimCLRViewsConfig()


class Objective:
    """Base class. ``modules``: all saved modules by name; ``trainable``: names updated."""

    name = "objective"

    def __init__(self, modules: dict[str, nn.Module], trainable: tuple[str, ...]) -> None:
        unknown = set(trainable) - set(modules)
        if unknown:
            raise ValueError(f"trainable modules {sorted(unknown)} are not among {sorted(modules)}")
        self.modules = modules
        self.trainable = trainable

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The trainable modules' parameters, each once, named ``<module>.<parameter>``."""
        seen: set[int] = set()
        out = []
        for n in self.trainable:
            for k, p in self.modules[n].named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{n}.{k}", p))
        return out

    def set_modes(self) -> None:
        """Trainable modules in train mode, the others frozen in eval mode."""
        for n, m in self.modules.items():
            on = n in self.trainable
            m.train(on)
            m.requires_grad_(on)

    def to(self, device: torch.device | str) -> Objective:
        for m in self.modules.values():
            m.to(device)
        return self

    def loss(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """x: (B, C, H, W) in [0, 1]; y: (B,) int64; g: CPU generator for the step's random draws."""
        raise NotImplementedError


class SupervisedObjective(Objective):
    """Cross-entropy (Eq. 3, optionally label-smoothed) of ``head(encoder(crop_flip(x)))``."""

    name = "supervised"

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        augment: CropFlipConfig | None = _CROP,
        label_smoothing: float = 0.0,
    ):
        super().__init__({"encoder": encoder, "head": head}, ("encoder", "head"))
        self.augment = augment
        self.label_smoothing = label_smoothing

    def loss(self, x, y, g):
        if self.augment is not None:
            x = crop_flip(x, g, self.augment)
        logits = self.modules["head"](self.modules["encoder"](x))
        loss = cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"ce": float(loss.detach()), "acc": float(acc)}


class SimCLRObjective(Objective):
    """NT-Xent (Eq. 1) on ``pi(g(x_hat))``, ``pi(g(x_tilde))``: CTA's self-supervised source stage."""

    name = "ssl"

    def __init__(self, encoder: nn.Module, projector: nn.Module, tau: float = 0.01, views=_VIEWS):
        super().__init__({"encoder": encoder, "projector": projector}, ("encoder", "projector"))
        self.tau, self.views = tau, views

    def loss(self, x, y, g):
        v1, v2 = simclr_views(x, g, self.views)
        b = x.shape[0]
        z = self.modules["projector"](self.modules["encoder"](torch.cat([v1, v2])))  # (2B, D)
        loss = nt_xent(z[:b], z[b:], self.tau)
        return loss, {"nt_xent": float(loss.detach())}


@dataclass(frozen=True)
class AlignWeights:
    """Weights of the alignment stage's terms (CTA section 3.4)."""

    tau: float = 0.5  # Eq. 4 temperature (Table 1, Table 3)
    con_weight: float = 0.0  # lambda of an added Eq. 1 term (0 = Eq. 4 alone)
    con_tau: float = 0.01  # Eq. 1 temperature of that term
    f_trainable: bool = False  # ablation: supervised encoder trainable, with a CE term
    ce_weight: float = 1.0  # weight of that CE term
    views: SimCLRViewsConfig = field(default_factory=SimCLRViewsConfig)


class AlignObjective(Objective):
    """Eq. 4 between ``pi(g(views))`` and ``w = f(x)`` (frozen f, eval mode); see :class:`AlignWeights`.

    ``f(x)`` is computed on the un-augmented image ``x``, the supervised model's clean input.
    """

    name = "align"

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        sup_encoder: nn.Module,
        sup_head: nn.Module,
        weights: AlignWeights = AlignWeights(),
    ):
        trainable = ("encoder", "projector") + (("sup_encoder",) if weights.f_trainable else ())
        super().__init__(
            {"encoder": encoder, "projector": projector, "sup_encoder": sup_encoder, "sup_head": sup_head}, trainable
        )
        self.w = weights

    def loss(self, x, y, g):
        v1, v2 = simclr_views(x, g, self.w.views)
        b = x.shape[0]
        z = self.modules["projector"](self.modules["encoder"](torch.cat([v1, v2])))  # (2B, D)
        f = self.modules["sup_encoder"]
        if self.w.f_trainable:
            w = f(x)  # (B, D)
        else:
            with torch.no_grad():
                w = f(x)
        loss = cross_encoder_alignment(z[:b], z[b:], w, self.w.tau)
        logs = {"align": float(loss.detach())}
        if self.w.con_weight > 0:
            con = nt_xent(z[:b], z[b:], self.w.con_tau)
            loss = loss + self.w.con_weight * con
            logs["nt_xent"] = float(con.detach())
        if self.w.f_trainable:
            ce = cross_entropy(self.modules["sup_head"](w), y)
            loss = loss + self.w.ce_weight * ce
            logs["ce"] = float(ce.detach())
        with torch.no_grad():  # accuracy of h(pi(g(x_hat))) on the views, a cheap progress signal
            logs["acc_view"] = float((self.modules["sup_head"](z[:b]).argmax(1) == y).float().mean())
        return loss, logs


class LinearProbeObjective(Objective):
    """CE of ``head(features(crop_flip(x)))`` with ``features`` frozen (eval mode, no grad): CTA-C."""

    name = "probe"

    def __init__(self, features: nn.Module, head: nn.Module, augment: CropFlipConfig | None = _CROP):
        super().__init__({"features": features, "head": head}, ("head",))
        self.augment = augment

    def loss(self, x, y, g):
        if self.augment is not None:
            x = crop_flip(x, g, self.augment)
        with torch.no_grad():
            z = self.modules["features"](x)
        logits = self.modules["head"](z)
        loss = cross_entropy(logits, y)
        return loss, {"ce": float(loss.detach()), "acc": float((logits.argmax(1) == y).float().mean())}


class JointObjective(Objective):
    """The Y model (CTA section 5.3): CE(h(e(crop_flip x))) + ssl_weight * Eq. 1 on pi(e(views))."""

    name = "joint"

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        projector: nn.Module,
        tau: float = 0.01,
        ssl_weight: float = 1.0,
        views=_VIEWS,
        augment: CropFlipConfig = _CROP,
    ):
        super().__init__({"encoder": encoder, "head": head, "projector": projector}, ("encoder", "head", "projector"))
        self.tau, self.ssl_weight, self.views, self.augment = tau, ssl_weight, views, augment

    def loss(self, x, y, g):
        e, h, pi = self.modules["encoder"], self.modules["head"], self.modules["projector"]
        xs = crop_flip(x, g, self.augment)
        v1, v2 = simclr_views(x, g, self.views)
        b = x.shape[0]
        feats = e(torch.cat([xs, v1, v2]))  # (3B, D): one pass, BN statistics shared by both tasks
        logits = h(feats[:b])
        ce = cross_entropy(logits, y)
        z = pi(feats[b:])  # (2B, D)
        con = nt_xent(z[:b], z[b:], self.tau)
        loss = ce + self.ssl_weight * con
        return loss, {
            "ce": float(ce.detach()),
            "nt_xent": float(con.detach()),
            "acc": float((logits.argmax(1) == y).float().mean()),
        }

"""The one method interface: a :class:`Method` wraps a model and adapts it on unlabeled test batches.

What a subclass declares (class attributes):

- ``name``: the registry name (set by :func:`register_method`).
- ``Config``: a frozen dataclass with the original paper's defaults (``steps``, ``lr``, ...).
- ``requirements``: a :class:`Requirements` saying what it adapts, what it needs (BN layers, source
  data, an auxiliary head trained at source time, views) and whether batch size 1 is supported.
- ``default_order``: whether a batch is predicted ``"before"`` its update (TENT/EATA/SAR/CoTTA: the
  logits come from the adaptation forward pass) or ``"after"`` it (MEMO, TTT, CTA: N steps, then
  predict). A protocol may override it; see :mod:`testtime.bench.protocols`.
- ``before_logits``: with order ``"before"`` and ``steps > 1``, which forward pass's logits are
  returned: ``"last"`` (the forward pass of the last step, i.e. after ``steps - 1`` updates; what the
  official loops of TENT, EATA, SAR and CoTTA return: ``for _ in range(steps): outputs =
  forward_and_adapt(x)``) or ``"first"`` (the default: the prediction before any update on the batch,
  the meaning of "before" for MEMO, TTT and CTA). With ``steps == 1`` both are the same pass.

What a subclass implements (hooks; the step loop, device handling, mixed precision, non-finite
guarding, snapshot and reset live here once):

- ``configure(self)``: put the model in the right modes and set ``requires_grad``; called once.
- ``params(self) -> list[(name, Parameter)]``: the adapted parameters (default: all with grad).
- ``loss(self, x) -> (loss, logits)``: the method's objective on batch ``x`` (B, C, H, W) in [0, 1].
  ``loss`` may be ``None`` (nothing to update on this batch, e.g. all samples filtered out).
- optionally ``after_step(self, x, logits)`` (EMA teachers, recovery, ...) and ``predict(self, x)``.

Adaptive state: everything in ``self.state_dict()`` is snapshotted at construction and restored by
:meth:`Method.reset`, together with the optimiser's state. So state must live in parameters, buffers
or submodules; use :meth:`Method.register_state` for tensors (moving averages, counters, Fisher
weights) and plain attribute assignment of ``nn.Module`` for teachers. Python scalars are not state.
:meth:`Method.state_tensors` / :meth:`Method.load_state_tensors` carry the live state (the same
pieces) through a file, so a stopped continual stream goes on in another process.

Example::

    method = create_method("tent", model, lr=1e-3)
    logits = method(x)          # adapt on x and return its predictions (method's default order)
    method.reset()              # back to the source weights, every piece of state included
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from testtime.registry import Registry

Order = Literal["before", "after"]
VIEWS = ("none", "simclr", "augmix", "rotation", "cotta-aug")


@dataclass(frozen=True)
class Requirements:
    """What a method adapts and needs; checked before any work is done."""

    adapts: str
    needs_bn: bool = False
    needs_source_data: bool = False
    needs_aux_head: bool = False
    min_batch_size: int = 1
    views: str = "none"

    @property
    def supports_batch_size_1(self) -> bool:
        return self.min_batch_size <= 1

    def describe(self) -> str:
        needs = [n for n, on in (("BN layers", self.needs_bn), ("source data", self.needs_source_data),
                                 ("aux head from source training", self.needs_aux_head)) if on]
        return (f"adapts {self.adapts}; needs {', '.join(needs) or 'nothing else'}; views {self.views}; "
                f"batch size 1 {'yes' if self.supports_batch_size_1 else 'no'}")


@dataclass(frozen=True)
class MethodConfig:
    """Fields every method has. Subclasses extend it with their paper's hyperparameters."""

    steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    amp: bool = False
    seed: int = 0  # seeds ``self.generator`` (augmentations, stochastic restore); reset restores it


METHODS: Registry = Registry("method")


def register_method(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: registers a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.add(name, cls, aliases=aliases)
        return cls

    return deco


def create_method(name: str, model: nn.Module, config: Any = None, **overrides: Any) -> Method:
    """Build a registered method around ``model``; ``overrides`` replace fields of its ``Config``.

    Unknown config fields fail with the list of valid ones, before any work is done.
    """
    cls: type[Method] = METHODS.get(name)
    config = config if config is not None else cls.Config()
    if overrides:
        valid = {f.name for f in dataclasses.fields(config)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"{name}: unknown config field(s) {bad}; valid: {sorted(valid)}")
        config = dataclasses.replace(config, **overrides)
    return cls(model, config)


def list_methods() -> list[str]:
    return METHODS.names()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def use_batch_statistics(model: nn.Module) -> None:
    """Make every BN layer normalise with the statistics of the current batch (PTBN, TENT).

    The layers go to train mode with ``momentum=0``: batch statistics are used, and the stored
    running statistics are kept unchanged (so the state dict keeps its shape and reset stays exact).
    """
    for m in batchnorm_layers(model):
        m.train()
        m.momentum = 0.0


def restore_state(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy ``saved`` (a state dict) into ``module``'s tensors in place: one flat ``_foreach_copy_``.

    Same result as ``module.load_state_dict(saved, strict=True)`` without its walk over the modules
    (on a ResNet-8, 1 to 4 ms on the project's loaded 2-core CPU; the copy itself 0.05 ms). Different keys or shapes
    fall back to ``load_state_dict``, which raises its usual error.
    """
    live = module.state_dict(keep_vars=True)
    if live.keys() != saved.keys() or any(t.shape != saved[k].shape for k, t in live.items()):
        module.load_state_dict(saved, strict=True)
        return
    with torch.no_grad():
        torch._foreach_copy_([t.detach() for t in live.values()], [saved[k] for k in live])


class Method(nn.Module):
    """Base class; see the module docstring."""

    name: ClassVar[str] = "method"
    Config: ClassVar[type] = MethodConfig
    requirements: ClassVar[Requirements] = Requirements(adapts="nothing")
    default_order: ClassVar[Order] = "before"
    before_logits: ClassVar[Literal["first", "last"]] = "first"

    def __init__(self, model: nn.Module, config: Any = None) -> None:
        super().__init__()
        config = config if config is not None else self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        # Random draws of a method (views, dropout of weights, ...) come from this CPU generator;
        # its state is part of the snapshot, so reset() replays the same draws.
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.check_model(model)
        self.model = model
        self.configure()
        self._params = [p for _, p in self.params()]
        self.optimizer = self.build_optimizer(self._params) if self._params and self.config.steps > 0 else None
        # A diagnostic, not adaptive state: reset() does not clear it.
        self.nonfinite_steps = 0
        self._snapshot: dict[str, Any] | None = None
        self.snapshot()

    # ----- declared state -------------------------------------------------------------------
    @property
    def model_device(self) -> torch.device:
        """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
        for t in itertools.chain(self.model.parameters(), self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def register_state(self, name: str, value: torch.Tensor) -> None:
        """Declare a tensor of adaptive state: saved by snapshot(), restored by reset().

        It is placed on the model's device, so a method made around a model already on the GPU keeps
        all its state there; ``.to()`` moves it later like any buffer."""
        self.register_buffer(name, value.detach().clone().to(self.model_device), persistent=True)

    def snapshot(self) -> None:
        """Take the current model, declared state and optimiser state as the reset point."""
        self._snapshot = {
            "state": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "optim": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "rng": self.generator.get_state(),
        }

    def reset(self) -> None:
        """Restore the snapshot exactly: weights, BN statistics, declared state, optimiser state.

        The tensors are restored with one flat in-place copy (:func:`restore_state`), no module copy.
        """
        assert self._snapshot is not None
        restore_state(self, self._snapshot["state"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optim"]))
        self.generator.set_state(self._snapshot["rng"])

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The live adaptive state as flat tensors and JSON-safe meta, for a file (a stopped stream resumed
        in another process): the state dict (``state.<key>``: weights, BN statistics, declared state,
        teachers), the optimiser's moments (``optim.<index>.<key>``; its groups in the meta), the random
        generator (``rng``) and the ``nonfinite_steps`` diagnostic. Loaded by :meth:`load_state_tensors`
        into a method made the same way, its next steps are bit for bit this one's (tested for every
        registered method). The reset point is not included: it is the construction's."""
        from testtime.train.checkpoint import optimizer_tensors

        tensors = {f"state.{k}": v.detach() for k, v in self.state_dict().items()}
        meta: dict[str, Any] = {"nonfinite_steps": int(self.nonfinite_steps), "optimizer_groups": None}
        if self.optimizer is not None:
            opt, meta["optimizer_groups"] = optimizer_tensors(self.optimizer)
            tensors.update(opt)
        tensors["rng"] = self.generator.get_state()
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Load what :meth:`state_tensors` gave (keys and shapes are checked by ``load_state_dict``)."""
        from testtime.train.checkpoint import load_optimizer_tensors

        if "rng" not in tensors or (self.optimizer is not None) != (meta.get("optimizer_groups") is not None):
            raise ValueError(f"{self.name}: the saved state is not this method's (no generator state, or an "
                             "optimiser where this method has none or the other way round)")
        restore_state(self, {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")})
        if self.optimizer is not None:
            load_optimizer_tensors(self.optimizer, tensors, meta["optimizer_groups"])
        self.generator.set_state(tensors["rng"])
        self.nonfinite_steps = int(meta.get("nonfinite_steps", 0))

    # ----- hooks ----------------------------------------------------------------------------
    @classmethod
    def example_config(cls) -> Any:
        """A light config for the contract tests (at most 2 steps); the paper's defaults stay in ``Config``.

        Methods with many views per image override it to use fewer (the behaviour tested is the same).
        """
        cfg = cls.Config()
        return dataclasses.replace(cfg, steps=min(cfg.steps, 2))

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        """A tiny model this method accepts; the contract tests build every method on it.

        Methods that need more than a plain classifier (an auxiliary head, a CTA bundle) override it.
        """
        from testtime.models import create_model

        return create_model("resnet8", num_classes=num_classes, in_chans=in_chans)

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error when ``model`` lacks what the method needs (before any work)."""
        if self.requirements.needs_bn and not has_batchnorm(model):
            raise ValueError(f"method {self.name!r} adapts BatchNorm layers but the model has none")

    def configure(self) -> None:
        """Set modes and requires_grad. Default: eval mode, nothing trainable."""
        self.model.eval()
        self.model.requires_grad_(False)

    def params(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The adapted parameters, named relative to ``self``."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        raise ValueError(f"{self.name}: optimizer must be one of adam, adamw, sgd; got {c.optimizer!r}")

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return (loss or None, logits (B, K)) for batch ``x``."""
        return None, self.predict(x)

    def after_step(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        """Called after every optimiser step (EMA teachers, recovery, ...)."""

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """One backward + update; SAR overrides this with its two-pass SAM update."""
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) with the current weights, no update."""
        return self.model(x)

    # ----- the step loop --------------------------------------------------------------------
    def check_batch(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a float tensor (B, C, H, W) in [0, 1], got "
                             f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        if not bool(torch.isfinite(x).all()):  # BN would spread one NaN pixel over the whole batch
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise ValueError(f"{self.name}: x has NaN or Inf values in {bad} of {x.shape[0]} images; "
                             "pass finite images (testtime.api.Adapter(on_nonfinite='drop') drops them)")
        if x.shape[0] < self.requirements.min_batch_size:
            raise ValueError(
                f"method {self.name!r} needs batches of at least {self.requirements.min_batch_size} images, "
                f"got {x.shape[0]}; use a protocol with a larger batch size or a method that supports batch size 1"
            )

    def _autocast(self, x: torch.Tensor):
        return torch.autocast(device_type=x.device.type, enabled=bool(self.config.amp))

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``config.steps`` updates on ``x``; return the logits of its first or last forward pass.

        Which one is ``before_logits`` (see the module docstring): ``"first"`` is the pre-update
        prediction, ``"last"`` the forward pass of the last step (after ``steps - 1`` updates).

        A non-finite loss skips the step; non-finite weights after a step are restored from the
        weights before it. Both are counted in ``self.nonfinite_steps``.
        """
        self.check_batch(x)
        first: torch.Tensor | None = None
        last: torch.Tensor | None = None
        with torch.enable_grad():
            for _ in range(max(self.config.steps, 0)):
                with self._autocast(x):
                    loss, logits = self.loss(x)
                last = logits.detach().float()
                if first is None:
                    first = last
                if loss is None or self.optimizer is None:
                    continue
                if not torch.isfinite(loss):
                    self.nonfinite_steps += 1
                    continue
                backup = [p.detach().clone() for p in self._params]
                self.optimizer_step(loss)
                if not all(torch.isfinite(p).all() for p in self._params):
                    with torch.no_grad():
                        for p, b in zip(self._params, backup):
                            p.copy_(b)
                    self.nonfinite_steps += 1
                    continue
                self.after_step(x, logits.detach())
        if first is None:
            with self._autocast(x):
                return self.predict(x).float()
        return last if self.before_logits == "last" else first

    def step(self, x: torch.Tensor, order: Order | None = None) -> torch.Tensor:
        """Adapt on ``x``; return its logits predicted ``before`` (see ``before_logits``) or ``after`` the update."""
        order = order or self.default_order
        if order == "before":
            return self.adapt(x)
        if order == "after":
            self.adapt(x)
            with self._autocast(x):
                return self.predict(x).float()
        raise ValueError(f"order must be 'before' or 'after', got {order!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x)

    def adapted_parameter_names(self) -> list[str]:
        return [n for n, _ in self.params()]

"""CTA's pipeline config: data, model, the source-time stages, test time and evaluation; checks of values.

Only what differs from these defaults is in the shipped presets (``testtime/configs/*.yaml``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from testtime.data.names import CORRUPTIONS_15, CORRUPTIONS_EXTRA
from testtime.train.objectives import AlignWeights
from testtime.train.trainer import TrainConfig

if TYPE_CHECKING:
    from testtime.data.experiment import PipelineData

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # a plain file name: runs/<name> stays in runs/
STAGES = ("supervised", "ssl", "align", "probe", "joint")
HELDOUT_4 = CORRUPTIONS_EXTRA  # the 4 held-out corruptions, for choosing hyperparameters


def check_range(where: str, value: Any, *, lo: float | None = None, hi: float | None = None, open_lo: bool = False,
                none_ok: bool = False) -> None:
    """Raise ``ValueError("<where> must be ...")`` unless ``value`` is a finite number in the range."""
    if value is None and none_ok:
        return
    lo_txt = "" if lo is None else (f"> {lo:g}" if open_lo else f">= {lo:g}")
    rng = " and ".join(t for t in (lo_txt, "" if hi is None else f"<= {hi:g}") if t) or "finite"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (lo is None or (value > lo if open_lo else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        raise ValueError(f"{where} must be {rng}{' (or null)' if none_ok else ''}, got {value!r}")


def _check_names(where: str, names: Sequence[str], valid: Sequence[str]) -> None:
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"{where}: unknown name(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the source and test images come from; every subset is seeded."""

    dataset: str = "imagefolder"  # a testtime.data dataset name
    root: str | None = None  # None: $<root_env> (image folders need a root)
    root_env: str | None = "TESTTIME_CIFAR10_JPEG"
    train_split: str = "train"
    test_split: str = "test"
    train_per_class: int | None = 1000  # None = the whole training split
    test_per_class: int = 50  # per corruption: the same seeded clean subset, corrupted
    heldout_per_class: int = 26  # a disjoint seeded subset for the held-out corruptions
    seed: int = 0  # the training subset and the first test subset (the trained models depend on it)
    # the test subset and the corruption draws (not training): None = seed; another value draws a new
    # test subset disjoint from the held-out one, so several eval seeds reuse one trained model
    eval_seed: int | None = None

    def __post_init__(self) -> None:
        check_range("data.train_per_class", self.train_per_class, lo=1, none_ok=True)
        check_range("data.test_per_class", self.test_per_class, lo=1)
        check_range("data.heldout_per_class", self.heldout_per_class, lo=0)
        check_range("data.seed", self.seed, lo=0)
        check_range("data.eval_seed", self.eval_seed, lo=0, none_ok=True)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet8"
    norm: str = "batch"
    # "default": PyTorch's initialisation; "dirac": airbench94's, each 3x3 convolution's first C_in
    # filters set to the identity after it (testtime.models.init.dirac_init_)
    conv_init: str = "default"

    def __post_init__(self) -> None:
        from testtime.models import list_models
        from testtime.models.init import CONV_INITS

        _check_names("model.arch", [self.arch], list_models())
        _check_names("model.norm", [self.norm], ("batch", "group"))
        _check_names("model.conv_init", [self.conv_init], CONV_INITS)


@dataclass(frozen=True)
class SSLStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    tau: float = 0.01  # Eq. 1 (Table 3)
    init: str = "supervised"  # "supervised": g = copy of f; "scratch": fresh weights
    pi_init: str = "identity"  # "identity" | "random"


@dataclass(frozen=True)
class AlignStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    weights: AlignWeights = field(default_factory=AlignWeights)


@dataclass(frozen=True)
class ProbeStageConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, warmup_epochs=0, lr=1e-3))


@dataclass(frozen=True)
class JointStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    tau: float = 0.01
    ssl_weight: float = 1.0
    init: str = "supervised"  # "supervised": start from h(f) + identity pi; "scratch"


PEER_INITS = ("scratch", "supervised")


@dataclass(frozen=True)
class PeerTrainConfig:
    """Source training of the stages with their own heads: the CTA paper's peers
    (:mod:`testtime.train.peer_stages`) and ``ttt`` / ``ttt++`` (:mod:`testtime.train.ttt_stages`).

    ``init``: ``"scratch"`` trains ClusT3's, NC-TTT's, TTT's and TTT++'s encoder + classifier with their
    heads from scratch (the papers); ``"supervised"`` starts them from the ``supervised`` checkpoint (a
    CPU-budget deviation; ReC-TTT always starts from it). ``train``: None = the pipeline's ``supervised``
    TrainConfig; given, a whole TrainConfig (unset fields take TrainConfig's defaults).
    """

    init: str = "scratch"
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        if self.init not in PEER_INITS:
            raise ValueError(f"peer_train.init must be one of {', '.join(PEER_INITS)}, got {self.init!r}")


@dataclass(frozen=True)
class TTTConfig:
    """Test time (paper: Adam, lr 1e-6, batch 128, 20 iterations, tau 0.01, episodic)."""

    lr: float = 1e-6
    steps: int = 20
    batch_size: int = 128
    tau: float = 0.01
    bn: str = "batch"
    protocol: str = "episodic"
    select_on_heldout: bool = True  # choose lr and steps on the held-out corruptions
    lr_candidates: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    max_steps: int = 20  # the curve's length (Fig. 3)
    seed: int = 0

    def __post_init__(self) -> None:
        from testtime.bench.protocols import get_protocol, list_protocols

        check_range("ttt.lr", self.lr, lo=0, open_lo=True)
        check_range("ttt.steps", self.steps, lo=1)
        check_range("ttt.tau", self.tau, lo=0, open_lo=True)
        check_range("ttt.max_steps", self.max_steps, lo=1)
        check_range("ttt.seed", self.seed, lo=0)
        _check_names("ttt.bn", [self.bn], ("batch", "source"))
        _check_names("ttt.protocol", [self.protocol], list_protocols())
        try:  # the protocol with this batch size (single-sample fixes its own: 1)
            get_protocol(self.protocol, batch_size=self.batch_size, seed=self.seed)
        except ValueError as exc:
            raise ValueError(f"ttt.protocol / ttt.batch_size: {exc}") from None
        if self.select_on_heldout and not self.lr_candidates:
            raise ValueError("ttt.lr_candidates: at least one learning rate is needed with ttt.select_on_heldout")
        for i, c in enumerate(self.lr_candidates):
            check_range(f"ttt.lr_candidates[{i}]", c, lo=0, open_lo=True)


EVAL_ROWS = (
    "supervised", "supervised+bn", "aligned", "aligned+bn", "cta", "cta-paper-settings",
    "ssl+probe", "ssl+probe+bn", "cta-c", "y-model-eval", "y-model+bn", "y-model",
)  # fmt: skip


@dataclass(frozen=True)
class EvalConfig:
    corruptions: tuple[str, ...] = CORRUPTIONS_15
    heldout: tuple[str, ...] = HELDOUT_4
    severity: int = 5
    params: str | None = None  # corruption parameter set; None = by image size (32 px: "cifar")
    rows: tuple[str, ...] = EVAL_ROWS

    def __post_init__(self) -> None:
        from testtime.corruptions.params import PARAM_SETS

        if not self.corruptions:
            raise ValueError("eval.corruptions: at least one corruption is needed")
        _check_names("eval.corruptions", self.corruptions, CORRUPTIONS_15 + CORRUPTIONS_EXTRA)
        _check_names("eval.heldout", self.heldout, CORRUPTIONS_15 + CORRUPTIONS_EXTRA)
        if self.params is not None:
            _check_names("eval.params", [self.params], list(PARAM_SETS))
        _check_names("eval.rows", self.rows, EVAL_ROWS)


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "custom"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads when set
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    supervised: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLStageConfig = field(default_factory=SSLStageConfig)
    align: AlignStageConfig = field(default_factory=AlignStageConfig)
    probe: ProbeStageConfig = field(default_factory=ProbeStageConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # source-time heads of the CTA paper's peers, by method: fields of its HeadConfig that differ from
    # the paper's, e.g. {"nc-ttt": {"embed_dim": 64}} (``--set peer_heads.nc-ttt.embed_dim=64``)
    peer_heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    peer_train: PeerTrainConfig = field(default_factory=PeerTrainConfig)  # peers' + ttt/ttt++ source training

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name) or set(self.name) == {"."}:
            raise ValueError(
                f"name must be a plain name (letters, digits, '.', '_', '-'; no '/', no '..'), got {self.name!r}; "
                "it becomes the default run directory runs/<name>"
            )
        if self.ssl.init not in ("supervised", "scratch"):
            raise ValueError(f"ssl.init must be 'supervised' or 'scratch', got {self.ssl.init!r}")
        if self.ssl.pi_init not in ("identity", "random"):
            raise ValueError(f"ssl.pi_init must be 'identity' or 'random', got {self.ssl.pi_init!r}")
        if self.joint.init not in ("supervised", "scratch"):
            raise ValueError(f"joint.init must be 'supervised' or 'scratch', got {self.joint.init!r}")
        if self.ttt.batch_size < 2:
            raise ValueError(f"ttt.batch_size must be >= 2 (NT-Xent needs negatives), got {self.ttt.batch_size}")
        if not 1 <= self.eval.severity <= 5:
            raise ValueError(f"eval.severity must be 1..5, got {self.eval.severity}")
        check_range("seed", self.seed, lo=0)
        check_range("threads", self.threads, lo=1, none_ok=True)
        check_device("device", self.device, here=False)


def check_device(where: str, device: str, *, here: bool = True) -> None:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``); with ``here``, one this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{where}: not a torch device: {device!r} (e.g. cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{where}: device type {dev.type!r} is not supported; use cpu, cuda or mps")
    if not here:
        return
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{where}: {device!r} asked but CUDA is not available here; use {where}=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{where}: {device!r} but only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where}: 'mps' asked but MPS is not available here; use {where}=cpu")


def check_runnable(cfg: PipelineConfig, data: PipelineData | None = None) -> None:
    """What a valid config still needs on this machine and with its data, checked before any training:
    the device exists here; the corruption parameter set suits the image size and every corruption."""
    check_device("device", cfg.device)
    if data is None:
        return
    from testtime.corruptions.core import check_feasible
    from testtime.corruptions.params import resolve_params

    h, w = data.test.image_size
    try:
        pset = resolve_params(cfg.eval.params, h, w)
        for name in (*cfg.eval.corruptions, *(cfg.eval.heldout if cfg.ttt.select_on_heldout else ())):
            check_feasible(name, pset, h, w)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"eval.params / eval.corruptions: {exc.args[0] if exc.args else exc}") from None


"""CTA end to end: the source-time stages, then evaluation on corrupted test sets.

Stages (each a call of the one trainer :func:`testtime.train.fit`, each a ``testtime train``
sub-command, each writing ``<run_dir>/<stage>.safetensors`` + ``.json``):

1. ``supervised``: h(f(.)) with CE (Eq. 3).
2. ``ssl``: pi(g(.)) with NT-Xent (Eq. 1); g starts as a copy of f (``ssl.init="supervised"``,
   the paper's "duplicate a pretrained model") or from scratch; pi is the identity
   (``ssl.pi_init="identity"``: then h(pi(g(x))) = h(f(x)) at the start) or random.
3. ``align``: pi(g(.)) with Eq. 4 against the frozen f (w = f(x)), optionally + Eq. 1, optionally
   f trainable with CE (section 3.4).
4. ``probe``: a linear classifier on the frozen SSL model's features pi(g(x)) (CTA-C).
5. ``joint``: the Y model, shared encoder + classifier + projector, CE + Eq. 1.

Evaluation (:func:`evaluate_pipeline`): test-time learning rate and iteration count chosen on the
held-out corruptions with the accuracy-against-iterations curve (Fig. 3); then every row on the
test corruptions under the episodic protocol.

Only the CLI reads YAML: :func:`config_from_dict` turns a plain dict into the typed config.

Example::

    cfg = config_from_dict(PipelineConfig, {"data": {"dataset": "fashion-mnist"}, "model": {"arch": "resnet8"}})
    models = run_stages(cfg, "runs/demo", stages=("supervised", "ssl", "align"))
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from testtime.data import ImageSplit, load_dataset, subset_per_class
from testtime.data.names import CORRUPTIONS_15, CORRUPTIONS_EXTRA
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, feature_dim, projector
from testtime.train.checkpoint import _atomic_write, environment, save_modules
from testtime.train.distributed import is_main
from testtime.train.objectives import (
    AlignObjective,
    AlignWeights,
    JointObjective,
    LinearProbeObjective,
    SimCLRObjective,
    SupervisedObjective,
)
from testtime.train.trainer import FitResult, TrainConfig, fit

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
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("data.train_per_class", self.train_per_class, lo=1, none_ok=True)
        check_range("data.test_per_class", self.test_per_class, lo=1)
        check_range("data.heldout_per_class", self.heldout_per_class, lo=0)
        check_range("data.seed", self.seed, lo=0)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet8"
    norm: str = "batch"

    def __post_init__(self) -> None:
        from testtime.models import list_models

        _check_names("model.arch", [self.arch], list_models())
        _check_names("model.norm", [self.norm], ("batch", "group"))


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


# ----- typed configs from plain dicts (the CLI reads the YAML) ------------------------------------
def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return config_from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in value)
        return tuple(_build(a, v, where) for a, v in zip(args, value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a nested dict; unknown keys fail listing the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join((where + '.' if where else '') + u for u in unknown)}; "
            f"valid: {', '.join(names)}"
        )
    kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a section's own check (TrainConfig, ...): name the section
        msg = str(exc)
        if where and not msg.startswith(where):
            raise ValueError(f"{where}: {msg}") from None
        raise


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["ssl.train.epochs=3", "ttt.lr=1e-4"]`` -> a new nested dict (values parsed as YAML scalars)."""
    import yaml

    out = copy.deepcopy(values)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        if not all(parts):
            raise ValueError(f"--set: expected a dotted key such as ttt.lr, got {key!r}")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"--set {key}: cannot read the value {raw!r} as YAML ({first})") from None
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ----- data -------------------------------------------------------------------------------------
@dataclass
class PipelineData:
    train: ImageSplit
    test: ImageSplit  # the clean seeded evaluation subset
    heldout: ImageSplit  # a disjoint seeded subset for the held-out corruptions


def load_data(cfg: DataConfig) -> PipelineData:
    """Load the source training subset and the two seeded, disjoint test subsets."""
    root = cfg.root
    if root is None and cfg.root_env:
        root = os.environ.get(cfg.root_env) or None
    if cfg.dataset == "imagefolder" and root is None:
        env = f" or the environment variable ${cfg.root_env}" if cfg.root_env else ""
        raise ValueError(f"data.root: an image-folder dataset needs its folder: --set data.root=/path{env}")
    train = load_dataset(cfg.dataset, split=cfg.train_split, root=root)
    if cfg.train_per_class is not None:
        try:
            train = subset_per_class(train, cfg.train_per_class, seed=cfg.seed)
        except ValueError as exc:
            raise ValueError(f"data.train_per_class: {exc}") from None
    test_all = load_dataset(cfg.dataset, split=cfg.test_split, root=root)
    rows_test = per_class_rows(test_all.labels, cfg.test_per_class, cfg.seed, where="data.test_per_class")
    rows_held = per_class_rows(test_all.labels, cfg.heldout_per_class, cfg.seed + 1, exclude=rows_test,
                               where="data.heldout_per_class")
    test = test_all.take(rows_test, name=f"{test_all.name}[{cfg.test_per_class}/class,seed={cfg.seed}]")
    heldout = test_all.take(rows_held, name=f"{test_all.name}[heldout {cfg.heldout_per_class}/class]")
    return PipelineData(train, test, heldout)


def per_class_rows(
    labels: np.ndarray, n: int, seed: int, exclude: np.ndarray | None = None, where: str = "n"
) -> np.ndarray:
    """``n`` seeded rows of every class (sorted), none of them in ``exclude``; errors name ``where``."""
    rng = np.random.default_rng(seed)
    banned = np.zeros(len(labels), dtype=bool)
    if exclude is not None:
        banned[exclude] = True
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & ~banned)
        if len(idx) < n:
            left = " left (after the test subset)" if exclude is not None else ""
            raise ValueError(f"{where}={n}: class {c} has only {len(idx)} images{left}")
        keep.append(idx[rng.permutation(len(idx))[:n]])
    return np.sort(np.concatenate(keep))


# ----- stages -----------------------------------------------------------------------------------
Logger = Callable[[str], None]


def _meta(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    return {
        "arch": cfg.model.arch,
        "pipeline": cfg.name,
        "stage_config": _stage_cfg(cfg, stage),
        "seed": cfg.seed,
        "device": cfg.device,
        **_source_settings(cfg),
        "threads": torch.get_num_threads(),
    }


def _source_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings (besides the stage's own) that a stage's weights depend on: its checkpoint is reused
    only when they match (:func:`check_reuse`)."""
    d = cfg.data
    return {
        "data_config": {"dataset": d.dataset, "train_split": d.train_split, "train_per_class": d.train_per_class,
                        "seed": d.seed},
        "model_config": config_to_dict(cfg.model),
    }


def check_reuse(cfg: PipelineConfig, run_dir: Path, stage: str, train: ImageSplit) -> None:
    """Refuse to reuse ``<run_dir>/<stage>`` (final or resume checkpoint) trained on other data or model
    settings, and to resume with another thread count (the weights would match no uninterrupted run)."""
    from testtime.train.checkpoint import checkpoint_exists, read_meta

    want = {**_source_settings(cfg), "seed": cfg.seed, "arch": cfg.model.arch,
            "train_set": {"name": train.name, "size": len(train)}}
    for path in (run_dir / stage, run_dir / f"{stage}.resume"):
        if not checkpoint_exists(path):
            continue
        side = read_meta(path)
        old = side.get("meta", {})
        now = json.loads(json.dumps(want))
        diff = [k for k in now if k in old and old[k] != now[k]]
        if diff:
            k = diff[0]
            changed = sorted(f for f in now[k] if old[k].get(f) != now[k][f]) if isinstance(now[k], dict) and \
                isinstance(old[k], dict) else []
            what = ", ".join(f"{k}.{f} was {old[k].get(f)!r}, now {now[k][f]!r}" for f in changed) or \
                f"{k} was {old[k]!r}, now {now[k]!r}"
            more = f" (also {', '.join(diff[1:])})" if len(diff) > 1 else ""
            raise ValueError(f"{path}.safetensors was trained with other settings: {what}{more}; "
                             "use another --run-dir or delete it to retrain")
        if path.name.endswith(".resume"):
            then = int(old.get("threads", side.get("environment", {}).get("cpu_threads", 0)) or 0)
            if then and then != torch.get_num_threads():
                raise ValueError(
                    f"{path}.safetensors was written with {then} CPU threads and this run uses "
                    f"{torch.get_num_threads()}: resuming would give weights that match no uninterrupted run; "
                    f"set threads={then} (or OMP_NUM_THREADS={then}) or delete the .resume files to restart"
                )


def check_run_dir(cfg: PipelineConfig, run_dir: str | Path, train: ImageSplit, stages: Sequence[str]) -> set[str]:
    """:func:`check_reuse` for ``stages`` and their prerequisites (returned), before any training."""
    need = set(stages)
    if need & {"align", "probe"}:
        need.add("ssl")
    if need & {"ssl", "align", "joint"}:
        need.add("supervised")
    for stage in STAGES:  # supervised always runs (or loads): every model starts from it
        if stage in need or stage == "supervised":
            check_reuse(cfg, Path(run_dir), stage, train)
    return need


def apply_threads(cfg: PipelineConfig, log: Logger | None = print) -> int:
    """``torch.set_num_threads(cfg.threads)`` when set, saying so when it overrides ``$OMP_NUM_THREADS``.

    Results on CPU depend (in the last digits) on the thread count; it is recorded with every checkpoint.
    """
    if cfg.threads:
        env = os.environ.get("OMP_NUM_THREADS")
        if env and env.strip() != str(cfg.threads) and log:
            log(f"threads={cfg.threads} from the config overrides OMP_NUM_THREADS={env} "
                "(pass --set threads=null to follow OMP_NUM_THREADS)")
        torch.set_num_threads(cfg.threads)
    return torch.get_num_threads()


def _stage_cfg(cfg: PipelineConfig, stage: str) -> Any:
    return config_to_dict(getattr(cfg, stage)) if dataclasses.is_dataclass(getattr(cfg, stage)) else None


def _train_cfg(cfg: PipelineConfig, t: TrainConfig) -> TrainConfig:
    return dataclasses.replace(t, device=cfg.device, seed=cfg.seed if t.seed == 0 else t.seed)


def _progress(stage: str, t: TrainConfig, train: ImageSplit, log: Logger | None) -> Callable[[int, dict], None]:
    """A ``fit`` callback that prints the step and losses at most every ``PROGRESS_EVERY_S`` seconds
    (the trainer's own lines come every ``log_every`` steps, which may be minutes apart on a CPU)."""
    from testtime.bench.runner import Heartbeat

    heart = Heartbeat(log)
    total = max(1, int(round(t.epochs * (len(train) // t.batch_size))))

    def on_step(step: int, logs: dict) -> None:
        if (el := heart.due()) is not None and heart.log is not None:
            vals = " ".join(f"{k} {v:.4g}" for k, v in logs.items())
            heart.log(f"[{stage}] step {step}/{total} {vals} ({el:.0f}s)")

    return on_step


def new_classifier(cfg: PipelineConfig, data: ImageSplit) -> nn.Module:
    """A fresh seeded model; an encoder with ``init_whitening`` (airbench) is whitened on the data."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.arch, data.num_classes, in_chans=data.channels, norm=cfg.model.norm)
    init = getattr(model.encoder, "init_whitening", None)
    if callable(init):
        rows = np.random.default_rng(cfg.seed).permutation(len(data))[:5000]
        init(torch.from_numpy(data.images[np.sort(rows)]).permute(0, 3, 1, 2).float().div(255.0))
    return model


@dataclass
class Models:
    """Everything the stages produce (each None until its stage ran or was loaded)."""

    supervised: nn.Module | None = None  # ResNet: .encoder = f, .fc = h
    ssl: ProjectedClassifier | None = None  # g, pi after Eq. 1 (head = h), not aligned
    aligned: ProjectedClassifier | None = None  # g, pi after Eq. 4 (head = h)
    probe: ProjectedClassifier | None = None  # SSL g, pi + linear probe (CTA-C)
    joint: ProjectedClassifier | None = None  # Y model (through_projector=False)
    fits: dict[str, FitResult] = field(default_factory=dict)

    def named(self) -> list[tuple[str, nn.Module]]:
        """The models that exist, with the labels used in logs and results."""
        pairs = (("supervised", self.supervised), ("ssl (before alignment)", self.ssl), ("aligned", self.aligned),
                 ("ssl+probe", self.probe), ("y-model", self.joint))
        return [(label, m) for label, m in pairs if m is not None]


def run_stages(
    cfg: PipelineConfig,
    run_dir: str | Path,
    data: PipelineData | ImageSplit,
    stages: Sequence[str] = STAGES,
    *,
    log: Logger | None = print,
) -> Models:
    """Run (or load, when their checkpoints exist) the requested stages and their prerequisites."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    apply_threads(cfg, log)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = data.train if isinstance(data, PipelineData) else data
    need = check_run_dir(cfg, run_dir, train, stages)
    m = Models()
    sup = new_classifier(cfg, train)
    m.fits["supervised"] = fit(
        SupervisedObjective(sup.encoder, sup.fc, label_smoothing=cfg.supervised.label_smoothing),
        train,
        _train_cfg(cfg, cfg.supervised),
        run_dir,
        "supervised",
        meta=_meta(cfg, "supervised"),
        on_step=_progress("supervised", cfg.supervised, train, log),
        log=log,
    )
    m.supervised = sup
    d = feature_dim(sup.encoder, train.channels, train.image_size[0])
    if "ssl" in need:
        if cfg.ssl.init == "supervised":
            g = copy.deepcopy(sup.encoder)
        else:
            g = new_classifier(dataclasses.replace(cfg, seed=cfg.seed + 1), train).encoder
        torch.manual_seed(cfg.seed + 2)
        pi = projector(d, identity=cfg.ssl.pi_init == "identity")
        m.fits["ssl"] = fit(
            SimCLRObjective(g, pi, tau=cfg.ssl.tau),
            train,
            _train_cfg(cfg, cfg.ssl.train),
            run_dir,
            "ssl",
            meta=_meta(cfg, "ssl"),
            on_step=_progress("ssl", cfg.ssl.train, train, log),
            log=log,
        )
        m.ssl = ProjectedClassifier(g, pi, sup.fc)
    if "align" in need:
        assert m.ssl is not None
        g, pi = copy.deepcopy(m.ssl.encoder), copy.deepcopy(m.ssl.projector)
        f = copy.deepcopy(sup.encoder)
        obj = AlignObjective(g, pi, f, sup.fc, cfg.align.weights)
        m.fits["align"] = fit(
            obj, train, _train_cfg(cfg, cfg.align.train), run_dir, "align", meta=_meta(cfg, "align"),
            on_step=_progress("align", cfg.align.train, train, log), log=log,
        )
        m.aligned = ProjectedClassifier(g, pi, sup.fc)
        # the test-time bundle h(pi(g(.))) alone: f is not in it, so it is never loaded at test time
        bundle_meta = {
            **_meta(cfg, "align"),
            "num_classes": train.num_classes,
            "in_chans": train.channels,
            "feature_dim": d,
            "through_projector": True,
            "method": "cta",
        }
        if is_main():  # one writer under torchrun
            save_modules(run_dir / "cta", {"encoder": g, "projector": pi, "head": sup.fc}, bundle_meta)
    if "probe" in need:
        assert m.ssl is not None
        feats = nn.Sequential(copy.deepcopy(m.ssl.encoder), copy.deepcopy(m.ssl.projector))
        torch.manual_seed(cfg.seed + 3)
        head = nn.Linear(d, train.num_classes)
        m.fits["probe"] = fit(
            LinearProbeObjective(feats, head),
            train,
            _train_cfg(cfg, cfg.probe.train),
            run_dir,
            "probe",
            meta=_meta(cfg, "probe"),
            on_step=_progress("probe", cfg.probe.train, train, log),
            log=log,
        )
        m.probe = ProjectedClassifier(feats[0], feats[1], head)
    if "joint" in need:
        if cfg.joint.init == "supervised":
            base = copy.deepcopy(sup)
        else:
            base = new_classifier(dataclasses.replace(cfg, seed=cfg.seed + 4), train)
        torch.manual_seed(cfg.seed + 5)
        pi_y = projector(d, identity=cfg.joint.init == "supervised")
        obj = JointObjective(base.encoder, base.fc, pi_y, tau=cfg.joint.tau, ssl_weight=cfg.joint.ssl_weight)
        m.fits["joint"] = fit(
            obj, train, _train_cfg(cfg, cfg.joint.train), run_dir, "joint", meta=_meta(cfg, "joint"),
            on_step=_progress("joint", cfg.joint.train, train, log), log=log,
        )
        m.joint = ProjectedClassifier(base.encoder, pi_y, base.fc, through_projector=False)
    return m


# ----- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def clean_accuracy(
    model: nn.Module,
    split: ImageSplit,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    test_batch_bn: bool = False,
    seed: int = 0,
) -> float:
    """Accuracy (%) of ``model`` on ``split`` in eval mode (or with test-batch BN statistics)."""
    from testtime.bench.runner import to_float_batch
    from testtime.methods.base import use_batch_statistics

    model = copy.deepcopy(model).to(device).eval()
    if test_batch_bn:
        use_batch_statistics(model)
    # a seeded shuffle: with test-batch BN statistics, batches must not be sorted by class
    order = np.random.default_rng(seed).permutation(len(split))
    correct = 0
    for s in range(0, len(split), batch_size):
        idx = order[s : s + batch_size]
        x = to_float_batch(split.images[idx], device)
        correct += int((model(x).argmax(1).cpu().numpy() == split.labels[idx]).sum())
    return 100.0 * correct / max(1, len(split))


def corrupted_domains(
    split: ImageSplit,
    names: Sequence[str],
    severity: int,
    seed: int,
    params: str | None = None,
    log: Logger | None = print,
) -> list:
    """One :class:`testtime.bench.Domain` per corruption of ``split`` at ``severity`` (seeded)."""
    from testtime.bench import Domain
    from testtime.corruptions import corrupt

    out = []
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        imgs = corrupt(split.images, name, severity, seed=seed + i, params=params)
        out.append(Domain(name, np.asarray(imgs, dtype=np.uint8), split.labels))
        if log:
            log(f"[corrupt] {name} s{severity}: {len(imgs)} images in {time.perf_counter() - t0:.1f}s")
    return out


def iteration_curve(
    bundle: ProjectedClassifier,
    method: str,
    domains: Sequence,
    *,
    lr: float,
    max_steps: int,
    batch_size: int = 128,
    tau: float = 0.01,
    bn: str = "batch",
    seed: int = 0,
    device: str = "cpu",
    log: Logger | None = None,
) -> dict[str, list[float]]:
    """Accuracy (%) per domain after 0..max_steps iterations per batch (episodic; the paper's Fig. 3).

    Iteration 0 is the bundle with test-batch BN statistics (``bn="batch"``) and no gradient step.
    """
    from testtime.bench import get_protocol
    from testtime.bench.runner import Heartbeat, to_float_batch
    from testtime.methods import create_method

    m = create_method(method, copy.deepcopy(bundle), steps=1, lr=lr, tau=tau, bn=bn, seed=seed).to(device)
    proto = get_protocol("episodic", batch_size=batch_size, seed=seed)
    correct = {d.name: np.zeros(max_steps + 1) for d in domains}
    total = {d.name: 0 for d in domains}
    heart = Heartbeat(log)
    n_batches = sum(-(-len(d.labels) // batch_size) for d in domains)
    for i, batch in enumerate(proto.stream(domains)):
        if (t := heart.due()) is not None and heart.log is not None:
            heart.log(f"[heldout] lr {lr:g}: batch {i}/{n_batches} ({t:.0f}s)")
        m.reset()
        x = to_float_batch(batch.images, device)
        for k in range(max_steps + 1):
            if k > 0:
                m.adapt(x)
            pred = m.predict(x).argmax(1).cpu().numpy()
            correct[batch.domain][k] += int((pred == batch.labels).sum())
        total[batch.domain] += len(batch.labels)
    return {n: list(100.0 * correct[n] / max(1, total[n])) for n in correct}


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def evaluate_pipeline(
    cfg: PipelineConfig, models: Models, data: PipelineData, run_dir: str | Path, *, log: Logger | None = print
) -> dict[str, Any]:
    """Choose lr / steps on the held-out corruptions, then evaluate every row on the test corruptions.

    Writes ``<run_dir>/results.json`` (rows, curves, the resolved config, versions, wall times).
    """
    from testtime.bench import evaluate, get_protocol
    from testtime.methods import create_method

    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    dev = cfg.device
    out: dict[str, Any] = {
        "config": config_to_dict(cfg),
        "environment": environment(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    out["clean"] = {}
    for label, mdl in models.named():
        out["clean"][label] = clean_accuracy(mdl, data.test, device=dev)
        if log:
            log(f"[clean] {label}: {out['clean'][label]:.2f}% on {len(data.test)} test images")
    _write_json(run_dir / "results.json", out)
    ttt = cfg.ttt
    lr, steps = ttt.lr, ttt.steps
    if ttt.select_on_heldout and cfg.eval.heldout and models.aligned is not None:
        held = corrupted_domains(
            data.heldout, cfg.eval.heldout, cfg.eval.severity, seed=cfg.seed + 1000, params=cfg.eval.params, log=log
        )
        curves = {}
        best = (-1.0, lr, steps)
        for cand in ttt.lr_candidates:
            t0 = time.perf_counter()
            cur = iteration_curve(
                models.aligned,
                "cta",
                held,
                lr=cand,
                max_steps=ttt.max_steps,
                batch_size=ttt.batch_size,
                tau=ttt.tau,
                bn=ttt.bn,
                seed=ttt.seed,
                device=dev,
                log=log,
            )
            mean = np.mean([cur[n] for n in cur], axis=0)  # (max_steps + 1,)
            curves[str(cand)] = {"per_domain": cur, "mean": list(mean), "wall_s": time.perf_counter() - t0}
            k = int(np.argmax(mean[1:])) + 1  # at least one step: the method is test-time *training*
            if mean[k] > best[0] + 1e-9:
                best = (float(mean[k]), cand, k)
            if log:
                log(
                    f"[heldout] lr {cand:g}: "
                    + " ".join(f"{v:.1f}" for v in mean)
                    + f" ({time.perf_counter() - t0:.0f}s)"
                )
        lr, steps = best[1], best[2]
        out["heldout"] = {
            "corruptions": list(cfg.eval.heldout),
            "curves": curves,
            "chosen_lr": lr,
            "chosen_steps": steps,
            "chosen_mean_accuracy": best[0],
        }
        if log:
            log(f"[heldout] chosen lr {lr:g}, steps {steps} (mean held-out accuracy {best[0]:.2f}%)")
        _write_json(run_dir / "results.json", out)
    domains = corrupted_domains(
        data.test, cfg.eval.corruptions, cfg.eval.severity, seed=cfg.seed, params=cfg.eval.params, log=log
    )
    proto = get_protocol(ttt.protocol, batch_size=ttt.batch_size, seed=ttt.seed)
    plan: dict[str, tuple[str, nn.Module | None, dict[str, Any]]] = {
        "supervised": ("source", models.supervised, {}),
        "supervised+bn": ("bn", models.supervised, {}),
        "aligned": ("source", models.aligned, {}),
        "aligned+bn": ("bn", models.aligned, {}),
        "cta": ("cta", models.aligned, {"steps": steps, "lr": lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed}),
        "cta-paper-settings": (
            "cta",
            models.aligned,
            {"steps": ttt.steps, "lr": ttt.lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed},
        ),
        "ssl+probe": ("source", models.probe, {}),
        "ssl+probe+bn": ("bn", models.probe, {}),
        "cta-c": ("cta-c", models.probe, {"steps": steps, "lr": lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed}),
        "y-model-eval": ("source", models.joint, {}),
        "y-model+bn": ("bn", models.joint, {}),
        "y-model": (
            "y-model",
            models.joint,
            {"steps": steps, "lr": lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed},
        ),
    }
    out["rows"] = {}
    out["protocol"] = proto.describe("after")
    for row in cfg.eval.rows:
        name, mdl, over = plan[row]
        if mdl is None:
            continue
        method = create_method(name, copy.deepcopy(mdl), **over)
        if log:
            log(f"[eval] {row}: {name} on {len(domains)} corruption(s) x {len(data.test)} images ...")
        res = evaluate(method, domains, proto, device=dev, log=log)
        out["rows"][row] = {"method": name, "settings": over, **res.to_dict()}
        if log:
            log(
                f"[eval] {row}: mean {res.mean_accuracy:.2f}% ({res.wall_s:.0f}s, non-finite steps "
                f"{res.nonfinite_steps})"
            )
        _write_json(run_dir / "results.json", out)
    out["wall_s_eval"] = time.perf_counter() - t_start
    _write_json(run_dir / "results.json", out)
    return out


def results_table(results: dict[str, Any]) -> str:
    """A markdown table (rows x corruptions + mean) from ``results.json``'s content."""
    rows = results.get("rows", {})
    if not rows:
        return "(no rows)"
    names = list(next(iter(rows.values()))["accuracy"].keys())
    short = {
        n: n.replace("_noise", "").replace("_blur", "").replace("_transform", "").replace("_compression", "")
        for n in names
    }
    head = "| row | " + " | ".join(short[n] for n in names) + " | mean |"
    sep = "|---|" + "---:|" * (len(names) + 1)
    lines = [head, sep]
    for r, v in rows.items():
        acc = v["accuracy"]
        lines.append(f"| {r} | " + " | ".join(f"{acc[n]:.1f}" for n in names) + f" | **{v['mean_accuracy']:.2f}** |")
    return "\n".join(lines)

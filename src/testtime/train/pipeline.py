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

The path of the data: the experiment config (:mod:`testtime.config`: typed dataclasses, YAML,
``--set``) -> the data (:mod:`testtime.data.experiment`) -> these stages (checkpoints in the run
dir, trained once and reused) -> evaluation (:mod:`testtime.bench.evaluation` for ``testtime cta``,
:mod:`testtime.bench.cells` for the grid of ``testtime bench CONFIG.yaml``) -> the results store
(:mod:`testtime.store`) -> the report (:mod:`testtime.report`). The config, data and evaluation
names are re-exported here for code written against the former single module.

Example::

    cfg = config_from_dict(PipelineConfig, {"data": {"dataset": "fashion-mnist"}, "model": {"arch": "resnet8"}})
    models = run_stages(cfg, "runs/demo", stages=("supervised", "ssl", "align"))
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from testtime.bench.evaluation import (  # noqa: F401  (re-exported)
    clean_accuracy,
    corrupted_domains,
    evaluate_pipeline,
    iteration_curve,
    results_table,
)
from testtime.config import (  # noqa: F401  (re-exported)
    EVAL_ROWS,
    HELDOUT_4,
    NAME_RE,
    STAGES,
    AlignStageConfig,
    DataConfig,
    EvalConfig,
    JointStageConfig,
    ModelConfig,
    PeerTrainConfig,
    PipelineConfig,
    ProbeStageConfig,
    SSLStageConfig,
    TTTConfig,
    apply_overrides,
    check_device,
    check_range,
    check_runnable,
    config_from_dict,
    config_to_dict,
    identity_dict,
)
from testtime.data import ImageSplit
from testtime.data.experiment import PipelineData, load_data, per_class_rows  # noqa: F401  (re-exported)
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, feature_dim, projector
from testtime.models.init import init_convs_
from testtime.train.checkpoint import save_modules
from testtime.train.distributed import is_main
from testtime.train.objectives import (
    AlignObjective,
    JointObjective,
    LinearProbeObjective,
    SimCLRObjective,
    SupervisedObjective,
)
from testtime.train.trainer import FitResult, TrainConfig, fit, settings_diff

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
        "model_config": identity_dict(cfg.model),  # later fields at their old value left out: as before
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
            what = settings_diff(diff[0], old[diff[0]], now[diff[0]])
            more = f" (also {', '.join(diff[1:])})" if len(diff) > 1 else ""
            raise ValueError(f"{path}.safetensors was trained with other settings: {what}{more}; "
                             "use another --run-dir or delete it to retrain")
        if path.name.endswith(".resume"):
            env = side.get("environment", {})
            then = int(old.get("threads", env.get("cpu_threads", 0)) or 0)
            if then and then != torch.get_num_threads():
                raise ValueError(
                    f"{path}.safetensors was written with {then} CPU threads and this run uses "
                    f"{torch.get_num_threads()}: resuming would give weights that match no uninterrupted run; "
                    f"set threads={then} (or OMP_NUM_THREADS={then}) or delete the .resume files to restart"
                )
            isa = env.get("cpu_capability")
            here = str(torch.backends.cpu.get_cpu_capability())
            if isa and isa != here:
                raise ValueError(
                    f"{path}.safetensors was written on a CPU whose torch kernels are {isa} and this one's are "
                    f"{here}: other kernels round differently, so resuming would give weights that match no "
                    "uninterrupted run; finish it on a machine of that kind or delete the .resume files to restart"
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
    return identity_dict(getattr(cfg, stage)) if dataclasses.is_dataclass(getattr(cfg, stage)) else None


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
    """A fresh seeded model (convolutions initialised as ``model.conv_init`` says); an encoder with
    ``init_whitening`` (airbench) is whitened on the data."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.arch, data.num_classes, in_chans=data.channels, norm=cfg.model.norm)
    init_convs_(model.encoder, cfg.model.conv_init)
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
        SupervisedObjective(sup.encoder, sup.fc, cfg.supervised.augment(),
                            label_smoothing=cfg.supervised.label_smoothing),
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

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
    HELDOUT_4,
    STAGES,
    AlignStageConfig,
    DataConfig,
    EvalConfig,
    JointStageConfig,
    ModelConfig,
    PipelineConfig,
    ProbeStageConfig,
    SSLStageConfig,
    TTTConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from testtime.data import ImageSplit
from testtime.data.experiment import PipelineData, load_data, per_class_rows  # noqa: F401  (re-exported)
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, feature_dim, projector
from testtime.train.checkpoint import save_modules
from testtime.train.objectives import (
    AlignObjective,
    JointObjective,
    LinearProbeObjective,
    SimCLRObjective,
    SupervisedObjective,
)
from testtime.train.trainer import FitResult, TrainConfig, fit

Logger = Callable[[str], None]


def _meta(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    return {
        "arch": cfg.model.arch,
        "pipeline": cfg.name,
        "stage_config": _stage_cfg(cfg, stage),
        "seed": cfg.seed,
        "device": cfg.device,
    }


def _stage_cfg(cfg: PipelineConfig, stage: str) -> Any:
    return config_to_dict(getattr(cfg, stage)) if dataclasses.is_dataclass(getattr(cfg, stage)) else None


def _train_cfg(cfg: PipelineConfig, t: TrainConfig) -> TrainConfig:
    return dataclasses.replace(t, device=cfg.device, seed=cfg.seed if t.seed == 0 else t.seed)


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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = data.train if isinstance(data, PipelineData) else data
    need = set(stages)
    if need & {"align", "probe"}:
        need.add("ssl")
    if need & {"ssl", "align", "joint"}:
        need.add("supervised")
    m = Models()
    sup = new_classifier(cfg, train)
    m.fits["supervised"] = fit(
        SupervisedObjective(sup.encoder, sup.fc, label_smoothing=cfg.supervised.label_smoothing),
        train,
        _train_cfg(cfg, cfg.supervised),
        run_dir,
        "supervised",
        meta=_meta(cfg, "supervised"),
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
            log=log,
        )
        m.ssl = ProjectedClassifier(g, pi, sup.fc)
    if "align" in need:
        assert m.ssl is not None
        g, pi = copy.deepcopy(m.ssl.encoder), copy.deepcopy(m.ssl.projector)
        f = copy.deepcopy(sup.encoder)
        obj = AlignObjective(g, pi, f, sup.fc, cfg.align.weights)
        m.fits["align"] = fit(
            obj, train, _train_cfg(cfg, cfg.align.train), run_dir, "align", meta=_meta(cfg, "align"), log=log
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
            obj, train, _train_cfg(cfg, cfg.joint.train), run_dir, "joint", meta=_meta(cfg, "joint"), log=log
        )
        m.joint = ProjectedClassifier(base.encoder, pi_y, base.fc, through_projector=False)
    return m

"""Source-time training of the CTA paper's peers (``clust3``, ``nc-ttt``, ``rec-ttt``) by the one trainer.

``clust3`` and ``nc-ttt`` train the classifier and the method's auxiliary heads on a shared testtime
ResNet (:class:`testtime.methods._layer_heads.LayerHeadObjective`: CE + weight * the heads' source
loss): from scratch by default (``peer_train.init="scratch"``, the papers' joint training), or, with
``peer_train.init="supervised"``, with the encoder + classifier first loaded from the preset's
``supervised`` checkpoint (all its weights must fit) and only the heads freshly (seeded) initialised:
a CPU-budget deviation from the papers (fine-tuning instead of joint training from scratch).
``rec-ttt`` always starts its two encoders, its frozen teacher and its two classifiers from the
``supervised`` checkpoint (the official code starts all three encoders from one pretrained model)
and trains them with the decoder (:class:`testtime.methods.rec_ttt.ReCTTTObjective`). The
``supervised`` checkpoint is trained first when missing. Each stage is run by
:func:`testtime.train.fit` with ``peer_train.train`` when set, else the pipeline's ``supervised``
:class:`TrainConfig`, on the same seeded training subset as the supervised model. The heads' settings
are the method's ``HeadConfig`` (paper defaults; a preset or ``--set peer_heads.<method>.<field>=...``
changes fields, e.g. NC-TTT's 1536 projector channels on a CPU), written to the sidecar as
``stage_config``; the effective init and train config go to its ``peer_train``: a checkpoint trained
with other heads, init or training is not silently reused.

Files: ``<run_dir>/<method>.safetensors/.json`` (the model's ``checkpoint_modules()``).
:func:`load_peer_model` rebuilds the model from the sidecar and fails, naming the method and the
command that trains it, when the checkpoint holds no such heads.

Example::

    cfg = load_config("cifar10-cpu", None, [])            # testtime.commands.train
    model = train_peer_stage(cfg, "runs/c10", load_data(cfg.data), "clust3")
    method = create_method("clust3", model)
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from testtime.train.checkpoint import load_modules, read_meta
from testtime.train.peer_init import (
    check_init,
    load_supervised_weights,
    peer_train_record,
    peer_train_settings,
    stage_init,
    supervised_source,
)
from testtime.train.trainer import fit

PEER_STAGES = ("clust3", "nc-ttt", "rec-ttt")
KIND = "layer-head-model"


def _method(stage: str) -> Any:
    from testtime.methods import METHODS

    if stage not in PEER_STAGES:
        raise ValueError(f"stage must be one of {', '.join(PEER_STAGES)}, got {stage!r}")
    return METHODS.get(stage)


def build_peer_model(stage: str, arch: str, num_classes: int, *, in_chans: int = 3, norm: str = "batch",
                     head_config: Any = None, conv_init: str = "default") -> nn.Module:
    """A fresh testtime ResNet ``arch`` with ``stage``'s auxiliary heads (``head_config``: its HeadConfig);
    the backbone's convolutions initialised as ``conv_init`` says (:mod:`testtime.models.init`)."""
    from testtime.models import create_model
    from testtime.models.init import init_convs_

    cls = _method(stage)
    base = create_model(arch, num_classes, in_chans=in_chans, norm=norm)
    init_convs_(base.encoder, conv_init)
    return cls.source_model(base, head_config)


def load_peer_model(path: str | Path, stage: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load the ``stage`` model saved by :func:`train_peer_stage` (sha256 checked).

    Fails before loading any tensor when the checkpoint holds no ``stage`` heads (e.g. a supervised
    or ``ttt`` checkpoint), naming the method and the command that trains it.
    """
    from testtime.config import config_from_dict

    cls = _method(stage)
    meta = read_meta(path)["meta"]
    if meta.get("kind") != KIND or meta.get("method") != stage:
        held = meta.get("method") or meta.get("stage") or meta.get("kind") or "unknown"
        raise ValueError(
            f"method {stage!r} needs its source-time heads, but checkpoint {path} holds none "
            f"(it was saved by {held!r}); train them with `testtime train {stage}`"
        )
    head = config_from_dict(cls.HeadConfig, meta["stage_config"])
    model = build_peer_model(stage, meta["arch"], meta["num_classes"], in_chans=meta["in_chans"], norm=meta["norm"],
                             head_config=head)
    load_modules(path, model.checkpoint_modules())
    return model.to(device).eval()


def peer_head_config(cfg: Any, stage: str) -> Any:
    """``stage``'s HeadConfig: the paper's defaults with the preset's ``peer_heads[stage]`` fields.

    Unknown methods or fields fail with the valid ones, before any work.
    """
    from testtime.config import config_from_dict

    cls = _method(stage)
    heads = getattr(cfg, "peer_heads", {}) or {}
    bad = sorted(set(heads) - set(PEER_STAGES))
    if bad:
        raise ValueError(f"peer_heads: unknown method(s) {bad}; valid: {', '.join(PEER_STAGES)}")
    return config_from_dict(cls.HeadConfig, dict(heads.get(stage) or {}), f"peer_heads.{stage}")


def train_peer_stage(cfg: Any, run_dir: str | Path, data: Any, stage: str, head_config: Any = None, *,
                     log: Any = print) -> nn.Module:
    """Train (or load, when its checkpoint exists) the source model of ``stage`` (one of ``PEER_STAGES``).

    ``cfg`` is a :class:`testtime.train.pipeline.PipelineConfig` (data, model, seed, device, ``peer_train``
    and the ``supervised`` TrainConfig are used); ``data`` its loaded data (``.train`` is the source split).
    """
    cls = _method(stage)
    if head_config is None:
        head_config = peer_head_config(cfg, stage)
    tcfg = peer_train_settings(cfg)[1]
    from_sup = bool(getattr(cls, "init_from_supervised", False))  # ReC-TTT: always from the supervised model
    init = stage_init(cfg, stage)
    if getattr(cfg, "threads", None):
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_init(run_dir, (stage,), init, "supervised" if from_sup else "scratch")
    train = getattr(data, "train", data)
    sup = None
    if init == "supervised":
        sup = supervised_source(cfg, run_dir, data, log=log)
    torch.manual_seed(cfg.seed)
    if from_sup:  # encoders and teacher start as copies of the trained model
        model = cls.source_model(copy.deepcopy(sup), head_config)
    else:
        model = build_peer_model(stage, cfg.model.arch, train.num_classes, in_chans=train.channels,
                                 norm=cfg.model.norm, head_config=head_config, conv_init=cfg.model.conv_init)
        if sup is not None:  # peer_train.init=supervised: the heads stay as built (seeded)
            load_supervised_weights(model, sup, stage)
    meta = {
        "kind": KIND,
        "method": stage,
        "arch": cfg.model.arch,
        "norm": cfg.model.norm,
        "num_classes": int(train.num_classes),
        "in_chans": int(train.channels),
        "image_size": list(train.image_size),
        "stage_config": dataclasses.asdict(head_config),
        "peer_train": peer_train_record(init, tcfg),
        "pipeline": cfg.name,
        "seed": cfg.seed,
    }
    augment = tcfg.augment()  # the train config's crop, as the supervised stage's
    fit(cls.source_objective(model, augment), train, tcfg, run_dir, stage, meta=meta, log=log)
    return model.eval()

"""Baselines next to CTA: every registered method on the same preset, data, test subset and protocol.

:func:`run_methods` evaluates a list of methods on the corrupted test domains of a
:class:`testtime.train.pipeline.PipelineConfig` (the same seeded subset, corruption seeds and
severity as CTA's own evaluation), each built on the model its requirements call for:

- plain TTA methods (``source``, ``bn``, ``tent``, ``eata``, ``sar``, ``memo``, ``cotta``) adapt a
  copy of the preset's **supervised** checkpoint, the very weights CTA's classifier h comes from;
- ``ttt`` / ``ttt++`` need an auxiliary head trained at source time: their own checkpoints, trained
  by the same trainer on the same subset, schedule and seed (:mod:`testtime.train.ttt_stages`); so do
  ``clust3``, ``nc-ttt`` and ``rec-ttt`` (:mod:`testtime.train.peer_stages`);
- ``cta``, ``cta-c`` and ``y-model`` are evaluated by :func:`testtime.train.pipeline.evaluate_pipeline`
  (they need the alignment / probe / joint stages).

Methods that need source data (EATA's Fisher weights) get ``fisher_samples`` clean training images
of the same subset.

Example::

    out = run_methods(cfg, "runs/cifar10-cpu", data, ["source", "bn", "tent"], protocol="episodic")
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from testtime.bench.cost import evaluate_with_cost
from testtime.bench.protocols import Protocol, get_protocol
from testtime.bench.runner import to_float_batch
from testtime.methods import METHODS, create_method

PIPELINE_METHODS = ("cta", "cta-c", "y-model")
AUX_METHODS = {"ttt": "ttt", "ttt++": "ttt++"}


def source_batches(images: np.ndarray, batch_size: int, device: str = "cpu"):
    for s in range(0, len(images), batch_size):
        yield to_float_batch(images[s : s + batch_size], device)


def prepare_source_data(method: nn.Module, name: str, train: Any, batch_size: int, device: str,
                        samples: int, seed: int) -> None:
    """Give a method that needs source data (EATA's Fisher weights) ``samples`` seeded clean training
    images; it takes them into its reset point."""
    if hasattr(method, "compute_fisher") and METHODS.get(name).requirements.needs_source_data:
        n = min(samples, len(train))
        rows = np.random.default_rng(seed).permutation(len(train))[:n]
        method.compute_fisher(source_batches(train.images[rows], batch_size, device))


def method_config(name: str, overrides: dict[str, Any] | None = None, *, where: str | None = None,
                  zero_steps: bool = False) -> Any:
    """The config of method ``name`` with ``overrides``, type- and range-checked (one-line errors naming
    ``<method>.<field>``), e.g. ``method_config("tent", {"lr": "abc"})`` fails: "tent.lr: expected a number".

    Ranges: ``steps`` >= 1 for methods that adapt by default (>= 0 for source / bn), ``lr`` and ``tau`` > 0,
    ``momentum`` in [0, 1], ``weight_decay`` and ``seed`` >= 0; every other number finite. ``where``
    prefixes the errors (default: the method's name); ``zero_steps`` allows ``steps: 0`` for every method
    (an ablation row of a bench grid: the source model as the method sets it up, no update).
    """
    from testtime.config import check_range, config_from_dict

    cls = METHODS.get(name)
    prefix = where or METHODS.canonical(name)
    cfg = config_from_dict(cls.Config, dict(overrides or {}), where=prefix)
    default = cls.Config()
    for f in dataclasses.fields(cfg):
        v, at = getattr(cfg, f.name), f"{prefix}.{f.name}"
        if f.name == "steps":
            check_range(at, v, lo=1 if default.steps >= 1 and not zero_steps else 0)
        elif f.name in ("lr", "tau", "temperature"):
            check_range(at, v, lo=0, open_lo=True)
        elif f.name == "momentum":
            check_range(at, v, lo=0, hi=1)
        elif f.name in ("weight_decay", "seed"):
            check_range(at, v, lo=0)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            check_range(at, v)
    return cfg


def method_configs(methods: Sequence[str], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """:func:`method_config` of every method; overrides of a method not in ``methods`` are an error."""
    ignored = sorted(set(overrides) - {METHODS.canonical(m) for m in methods} - set(methods))
    if ignored:
        raise ValueError(f"--method-set for {', '.join(ignored)}, which is not in the methods run "
                         f"({', '.join(methods)})")
    return {name: method_config(name, overrides.get(name)) for name in methods}


def resolve_protocol(cfg: Any, protocol: str | None, batch_size: int | None, order: str | None) -> Protocol:
    """The protocol of a bench run: ``protocol`` (default ``cfg.ttt.protocol``) with the preset's test-time
    batch size, unless the protocol fixes its own (``single-sample``: 1) or ``batch_size`` is given."""
    name = protocol or cfg.ttt.protocol
    fixed = get_protocol(name).fixed_batch_size
    bs = batch_size if batch_size is not None else (fixed or cfg.ttt.batch_size)
    return get_protocol(name, batch_size=bs, seed=cfg.ttt.seed, order=order)


def run_methods(
    cfg: Any,
    run_dir: str | Path,
    data: Any,
    methods: Sequence[str],
    *,
    protocol: str | None = None,
    batch_size: int | None = None,
    order: str | None = None,
    method_overrides: dict[str, dict[str, Any]] | None = None,
    fisher_samples: int = 2000,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Evaluate ``methods`` on the preset's corrupted test domains; returns a results dict.

    ``protocol`` / ``batch_size`` default to the preset's test-time protocol (``cfg.ttt``), i.e. the
    protocol CTA's rows were measured with. ``order`` ("before" / "after") overrides every method's
    own predict-before/after-update order: under the episodic protocol a one-step method that
    predicts "before" its update gives exactly the ``bn`` row, so ``order="after"`` is the fair match
    for CTA's rows (N steps, then predict). The dict has one entry per method under ``"rows"``
    (accuracy per corruption, mean, wall time, settings) and the protocol's description.
    """
    from testtime.bench.evaluation import corrupted_domains
    from testtime.train.pipeline import run_stages

    method_overrides = method_overrides or {}
    for name in list(methods) + list(method_overrides):
        METHODS.canonical(name)  # unknown names fail here, with the list, before any work
    bad = [m for m in methods if m in PIPELINE_METHODS]
    if bad:
        raise ValueError(f"methods: {bad} are evaluated by `testtime cta` (they need the CTA stages), not here")
    configs = method_configs(methods, method_overrides)
    proto = resolve_protocol(cfg, protocol, batch_size, order)
    for name in methods:
        need = METHODS.get(name).requirements.min_batch_size
        if proto.batch_size < need:
            raise ValueError(f"method {name!r} needs batches of at least {need} images; protocol batch_size is "
                             f"{proto.batch_size}")
    run_dir = Path(run_dir)
    dev = cfg.device
    supervised = run_stages(cfg, run_dir, data, stages=("supervised",), log=log).supervised
    domains = corrupted_domains(data.test, cfg.eval.corruptions, cfg.eval.severity, seed=cfg.seed,
                                params=cfg.eval.params, log=log)
    out: dict[str, Any] = {"protocol": proto.describe(), "rows": {},
                           "test_subset": data.test.name, "severity": cfg.eval.severity}
    for name in methods:
        model = _model_for(name, cfg, run_dir, data, supervised, log)
        over = method_overrides.get(name, {})
        method = create_method(name, copy.deepcopy(model), config=configs[name])
        t0 = time.perf_counter()
        prepare_source_data(method, name, data.train, proto.batch_size, dev, fisher_samples, cfg.seed)
        if log:
            log(f"[bench] {name}: {len(domains)} corruption(s) x {len(data.test)} images, {proto.describe()} ...")
        res, cost = evaluate_with_cost(method, domains, proto, device=dev, channels=data.train.channels, log=log)
        row = {"method": name, "settings": over, "order": proto.order or method.default_order, **res.to_dict(),
               "cost": cost}
        row["wall_s"] = time.perf_counter() - t0
        out["rows"][name] = row
        if log:
            log(f"[bench] {name}: mean {res.mean_accuracy:.2f}% ({row['wall_s']:.0f}s, "
                f"predict {row['order']} update, non-finite steps {res.nonfinite_steps})")
    return out


def _model_for(name: str, cfg: Any, run_dir: Path, data: Any, supervised: nn.Module, log) -> nn.Module:
    if name in AUX_METHODS:
        from testtime.train.ttt_stages import train_aux_stage

        return train_aux_stage(cfg, run_dir, data, AUX_METHODS[name], log=log)
    from testtime.train.peer_stages import PEER_STAGES, train_peer_stage

    if name in PEER_STAGES:
        return train_peer_stage(cfg, run_dir, data, name, log=log)
    return supervised

"""The cells of a bench grid and their evaluation: source models, test domains, methods, cost.

A **cell** is one (method label and its resolved settings, protocol, corruption, severity, eval
seed): its store key is the hash of its full resolved config (the method's whole Config, the source
model and the source stages' settings it comes from, the test subset size, batch size, order and the
hyperparameter selection). Cells are independent: each is evaluated from the method's reset point on
one corrupted test domain, except under ``continual``, where a cell is its corruption's part of the
one stream over all corruptions (in config order) that is never reset; :class:`BenchRun` keeps that
stream's state between cells and writes it to ``<run_dir>/streams/`` after every corruption
(:mod:`testtime.bench.streams`); a cell asked for out of turn (a resumed run, a shard) goes on from
that checkpoint, or replays the earlier corruptions when there is none, so the result is the same as
in one uninterrupted run.

Models come from the stage checkpoints in the run dir (``supervised``, ``aligned`` for CTA,
``probe`` for CTA-C, ``joint`` for the Y model, the baselines' own for TTT/TTT++/ClusT3/NC-TTT/ReC-TTT),
trained once when missing; ``testtime cta``'s evaluation is not involved.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from testtime.bench.cost import CostMeter
from testtime.bench.evaluation import corruption_seed
from testtime.bench.protocols import Domain, get_protocol
from testtime.bench.runner import run_batches
from testtime.bench.spec import BenchConfig, MethodSpec, method_config, method_name, source_config
from testtime.config import PeerTrainConfig, check_runnable, config_to_dict, identity_dict
from testtime.methods import METHODS, create_method
from testtime.train.checkpoint import device_description
from testtime.train.peer_stages import PEER_STAGES
from testtime.train.ttt_stages import AUX_STAGES

STAGE_OF_METHOD = {"cta": "aligned", "cta-c": "probe", "y-model": "joint", "ttt": "ttt", "ttt++": "ttt++",
                   "clust3": "clust3", "nc-ttt": "nc-ttt", "rec-ttt": "rec-ttt"}
STAGES_OF_KIND = {"supervised": ("supervised",), "aligned": ("supervised", "ssl", "align"),
                  "probe": ("supervised", "ssl", "probe"), "joint": ("supervised", "joint")}
HELDOUT_SEED = 1000  # corruption draws of the held-out corruptions (as testtime cta's selection)


def model_kind(label: str, spec: MethodSpec) -> str:
    return spec.model or STAGE_OF_METHOD.get(method_name(label, spec), "supervised")


class BenchRun:
    """Everything a grid's cells share, loaded once: source config, data, models, domains, methods."""

    def __init__(self, bench: BenchConfig, run_dir: str | Path, *, log: Callable[[str], None] | None = print,
                 progress: bool = True) -> None:
        from testtime.data.experiment import load_data

        self.bench, self.run_dir, self.log, self.progress = bench, Path(run_dir), log, progress
        self.cfg = source_config(bench)
        self.device = self.cfg.device
        self.device_label = device_description(self.device)  # stored beside every cell (read once)
        # the grid's corruptions, as the source config's evaluation would see them: checked on this machine
        # (device) and, once the data is read, against the image size (parameter set), before any training
        grid_eval = dataclasses.replace(self.cfg.eval, corruptions=bench.corruptions, heldout=bench.heldout)
        checked = dataclasses.replace(self.cfg, eval=grid_eval, ttt=dataclasses.replace(self.cfg.ttt,
                                                                                         select_on_heldout=True))
        check_runnable(checked)
        self.data = load_data(self.cfg.data)
        check_runnable(checked, self.data)
        self._models: dict[str, nn.Module] = {}
        self._weights: dict[str, str] = {}
        self._methods: dict[tuple, tuple[nn.Module, CostMeter]] = {}
        self._domains: dict[tuple, Domain] = {}
        self._subsets: dict[int, Any] = {}
        self._continual: dict[tuple, dict[str, Any]] = {}

    # ----- identity --------------------------------------------------------------------------
    def dataset(self) -> str:
        return self.cfg.name if self.cfg.data.dataset == "imagefolder" else self.cfg.data.dataset

    def source_identity(self, kind: str) -> dict[str, Any]:
        """The settings the source model of ``kind`` depends on (paths, device and test-time fields left out)."""
        c = identity_dict(self.cfg)  # without later fields at their old value: stored cells keep their keys
        data = {k: v for k, v in c["data"].items() if k not in ("root", "root_env", "eval_seed")}
        out = {"kind": kind, "seed": c["seed"], "data": data, "model": c["model"]}
        for stage in STAGES_OF_KIND.get(kind, ("supervised",)):
            out[stage] = c[stage]
        if kind in c["peer_heads"]:
            out["peer_heads"] = c["peer_heads"][kind]
        if kind in (*PEER_STAGES, *AUX_STAGES) and c["peer_train"] != identity_dict(PeerTrainConfig()):
            out["peer_train"] = c["peer_train"]  # default: left out, so cells stored before the section keep their keys
        return out

    def cell(self, label: str, protocol: str, corruption: str, severity: int, seed: int,
             chosen: Mapping[str, Any], selection: Mapping[str, Any] | None) -> dict[str, Any]:
        spec = self.bench.methods[label]
        mcfg = method_config(label, spec, dict(chosen))
        kind = model_kind(label, spec)
        return {
            "method": method_name(label, spec), "label": label, "corruption": corruption, "severity": severity,
            "seed": seed, "protocol": protocol, "backbone": self.cfg.model.arch, "dataset": self.dataset(),
            "hparams": {**spec.settings, **chosen},
            "config": {"method_config": config_to_dict(mcfg), "model": kind, "source": self.source_identity(kind),
                       "test_per_class": self.cfg.data.test_per_class, "batch_size": self.bench.batch_size,
                       "order": spec.order, "params": self.cfg.eval.params,
                       "corruption_order": list(self.bench.corruptions) if protocol == "continual" else None,
                       "selection": dict(selection) if selection else None},
        }  # fmt: skip

    # ----- models and methods ----------------------------------------------------------------
    def model(self, kind: str) -> nn.Module:
        if kind not in self._models:
            self._models[kind] = self._load_model(kind)
        return self._models[kind]

    def weights(self, kind: str) -> str:
        """The weights fingerprint of the source model of ``kind`` (computed once)."""
        if kind not in self._weights:
            from testtime.train.checkpoint import weights_fingerprint

            self._weights[kind] = weights_fingerprint(self.model(kind))
        return self._weights[kind]

    def _load_model(self, kind: str) -> nn.Module:
        from testtime.train.pipeline import run_stages

        if kind in AUX_STAGES:
            from testtime.train.ttt_stages import train_aux_stage

            return train_aux_stage(self.cfg, self.run_dir, self.data, kind, log=self.log)
        if kind in PEER_STAGES:
            from testtime.train.peer_stages import train_peer_stage

            return train_peer_stage(self.cfg, self.run_dir, self.data, kind, log=self.log)
        stage = {"supervised": "supervised", "aligned": "align", "probe": "probe", "joint": "joint"}[kind]
        models = run_stages(self.cfg, self.run_dir, self.data, stages=(stage,), log=self.log)
        return getattr(models, kind)

    def method(self, label: str, chosen: Mapping[str, Any], protocol: str) -> tuple[nn.Module, CostMeter]:
        """The method of ``label`` with ``chosen`` candidate values (built once, then reset per cell)."""
        from testtime.bench.grid import prepare_source_data

        spec = self.bench.methods[label]
        key = (label, tuple(sorted((k, repr(v)) for k, v in chosen.items())), protocol == "continual")
        if key not in self._methods:
            name = method_name(label, spec)
            cfg = method_config(label, spec, dict(chosen))
            m = create_method(name, copy.deepcopy(self.model(model_kind(label, spec))), cfg).to(self.device)
            prepare_source_data(m, name, self.data.train, self.bench.batch_size, self.device,
                                self.bench.fisher_samples, self.cfg.seed)
            self._methods[key] = (m, CostMeter(m, self.data.train.channels))
        return self._methods[key]

    def protocol(self, label: str, protocol: str, seed: int):
        spec = self.bench.methods[label]
        need = METHODS.get(method_name(label, spec)).requirements.min_batch_size
        bs = 1 if protocol == "single-sample" else self.bench.batch_size
        if bs < need:
            raise ValueError(f"methods.{label}: needs batches of at least {need} images; batch_size is {bs}")
        return get_protocol(protocol, batch_size=bs, seed=seed, order=spec.order)

    # ----- data ------------------------------------------------------------------------------
    def domain(self, corruption: str, severity: int, seed: int, *, heldout: bool = False) -> Domain:
        from testtime.corruptions import corrupt

        key = (corruption, severity, seed, heldout)
        if key not in self._domains:
            if len(self._domains) > 2 * len(self.bench.corruptions) + len(self.bench.heldout):
                self._domains.clear()
            split = self.data.heldout if heldout else self.subset(seed)
            t0 = time.perf_counter()
            base = HELDOUT_SEED + self.cfg.seed if heldout else seed
            imgs = corrupt(split.images, corruption, severity, seed=corruption_seed(corruption, base),
                           params=self.cfg.eval.params)
            self._domains[key] = Domain(corruption, np.asarray(imgs, dtype=np.uint8), split.labels)
            if self.log:
                self.log(f"[corrupt] {corruption} s{severity} eval seed {seed}{' (held-out)' if heldout else ''}: "
                         f"{len(imgs)} images in {time.perf_counter() - t0:.1f}s")
        return self._domains[key]

    def subset(self, seed: int):
        from testtime.data.experiment import eval_subset

        if seed not in self._subsets:
            assert self.data.pool is not None
            self._subsets[seed] = eval_subset(self.data.pool, self.cfg.data, seed)
        return self._subsets[seed]

    # ----- evaluation ------------------------------------------------------------------------
    def evaluate_cell(self, cell: Mapping[str, Any]) -> dict[str, Any]:
        """Accuracy (%) and cost of one cell (the function :func:`testtime.store.run_grid` calls)."""
        label, protocol, corr = cell["label"], cell["protocol"], cell["corruption"]
        sev, seed = cell["severity"], cell["seed"]
        chosen = {k: v for k, v in cell["hparams"].items() if k not in self.bench.methods[label].settings}
        if protocol == "continual":
            out = self._continual_cell(cell, chosen)
        else:
            method, meter = self.method(label, chosen, protocol)
            proto = self.protocol(label, protocol, seed)
            out = self._measure(method, meter, proto.stream([self.domain(corr, sev, seed)]), f"{label} {corr}",
                                proto.order)
        return {**out, "device": self.device_label}

    def _measure(self, method, meter, batches, desc: str, order) -> dict[str, Any]:
        before = meter.snapshot()
        correct = total = 0
        t0 = time.perf_counter()
        bar = tqdm(batches, disable=not self.progress, leave=False, desc=desc, unit="batch", position=1)
        for batch, pred in run_batches(method, bar, order, self.device):
            correct += int((pred == batch.labels).sum())
            total += len(batch.labels)
        wall = time.perf_counter() - t0
        return {"accuracy": 100.0 * correct / max(1, total), "n_images": total, "wall_s": wall,
                "images_per_s": total / wall if wall > 0 else None, **meter.since(before, total, self.device)}

    def _continual_cell(self, cell: Mapping[str, Any], chosen: Mapping[str, Any]) -> dict[str, Any]:
        """One corruption of a continual stream: run (or, out of turn, start again or resume from the stream's
        checkpoint, :mod:`testtime.bench.streams`) the stream up to it; a checkpoint after every corruption."""
        from testtime.bench.streams import drop_stream, load_stream, save_stream, stream_path

        label, corr, sev, seed = cell["label"], cell["corruption"], cell["severity"], cell["seed"]
        key = (label, tuple(sorted((k, repr(v)) for k, v in chosen.items())), sev, seed)
        state = self._continual.get(key)
        names = list(self.bench.corruptions)
        target = names.index(corr)
        path = stream_path(self.run_dir, cell)
        weights = self.weights(model_kind(label, self.bench.methods[label]))  # the stream's source model
        if state is None or (corr not in state["results"] and state["next"] > target):
            method, meter = self.method(label, chosen, "continual")
            proto = self.protocol(label, "continual", seed)
            batches = list(proto.stream([self.domain(c, sev, seed) for c in names]))
            # streams of the same method share its object (its weights move on here), and streams of another
            # severity / eval seed hold a copy of their images: drop both (a later cell replays its stream)
            for other in [k for k in self._continual if k[:2] == key[:2] or k[2:] != key[2:]]:
                del self._continual[other]
            state = {"method": method, "meter": meter, "order": proto.order, "batches": batches, "pos": 0,
                     "next": 0, "results": {}}
            self._continual[key] = state
            done = load_stream(path, method, cell, names, weights)
            if done:
                state["next"] = done
                state["pos"] = next(i for i, b in enumerate(batches) if b.domain == names[done])
                if self.log:
                    self.log(f"[continual] {label} s{sev} eval seed {seed}: resumed at {names[done]} from "
                             f"{path.name} (its {done} corruption(s) before not replayed)")
        while corr not in state["results"]:
            name = names[state["next"]]
            seg = []
            while state["pos"] < len(state["batches"]) and state["batches"][state["pos"]].domain == name:
                seg.append(state["batches"][state["pos"]])
                state["pos"] += 1
            state["results"][name] = self._measure(state["method"], state["meter"], seg, f"{label} {name}",
                                                   state["order"])
            state["next"] += 1
            if state["next"] < len(names):
                save_stream(path, state["method"], cell, names[: state["next"]], weights)
            else:
                drop_stream(path)
        return state["results"][corr]

"""``testtime train STAGE`` and ``testtime cta``: CTA's source-time stages and the whole pipeline.

Examples::

    testtime train supervised --preset cifar10-cpu --set data.root=/data/cifar10-jpeg
    testtime train align --preset cifar10-cpu --set align.weights.con_weight=1.0 --run-dir runs/a
    testtime cta --preset cifar10-cpu --run-dir runs/cifar10-cpu      # all stages + evaluation

Presets are YAML files shipped in ``testtime/configs`` (``--preset NAME``) or given as a path
(``--config FILE``); ``--set key=value`` overrides any field (dotted path; the value is YAML).
Every run writes its resolved config, seed, versions and device to ``<run-dir>/config.json``.

Data parallel (see :mod:`testtime.train.distributed`): the same command under ``torchrun`` trains
every stage on N processes (gloo on CPU, nccl on CUDA, one GPU per process), ``batch_size`` being
the global batch; only rank 0 logs and writes, and ``cta`` evaluates on rank 0::

    torchrun --standalone --nproc_per_node 2 -m testtime.cli train supervised --preset fmnist-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from testtime.cli import UserError
from testtime.commands import plain

TRAIN_DESCRIPTION = """Train one source-time stage of CTA, after the stages it needs (loaded when their
checkpoints exist): supervised h(f(x)) (CE), ssl pi(g(x)) (NT-Xent), align (Eq. 4), probe (a linear
classifier on the SSL features, CTA-C), joint (the Y model), or the ttt / ttt++ baselines' joint training.

Example::

    testtime train align --preset cifar10-cpu --set data.root=/data/cifar10-jpeg --run-dir runs/a
"""
CTA_DESCRIPTION = """CTA end to end: every source-time stage (supervised, ssl, align, probe, joint; those with
checkpoints are loaded), then the test-time learning rate and steps chosen on the held-out corruptions, then
every row (source, BN, CTA, CTA-C, Y model) on the corrupted test subset; results in <run-dir>/results.json.

Example::

    testtime cta --preset cifar10-cpu --run-dir runs/cifar10-cpu
"""
COMMON_TEXT = """
Presets are YAML files shipped with testtime (--preset NAME) or given as a path (--config FILE);
--set key=value overrides any field (dotted path; the value is YAML). Every run records its resolved
config in <run-dir>/config.json (another config later goes to config-<time>.json).
"""


def list_presets() -> list[str]:
    files = resources.files("testtime.configs")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str | None, config: str | None, overrides: list[str]) -> Any:
    """Read a preset / YAML file, apply ``--set`` overrides, build the typed PipelineConfig."""
    import yaml

    from testtime.config import PipelineConfig, apply_overrides, config_from_dict

    if preset and config:
        raise UserError("give --preset or --config, not both")
    values: dict[str, Any] = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise UserError(f"--config: file not found: {config}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise UserError(f"--config {config}: not a UTF-8 text (YAML) file") from None
    elif preset:
        if preset not in list_presets():
            raise UserError(f"--preset: unknown preset {preset!r}; valid: {', '.join(list_presets())}")
        text = resources.files("testtime.configs").joinpath(f"{preset}.yaml").read_text()
    else:
        text = "{}"
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{config or preset}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    if values is None and config:
        raise UserError(f"--config {config}: the file is empty (give a preset's fields, or use --preset)")
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise UserError(f"{config or preset}: expected a mapping at the top level")
    values = apply_overrides(values, overrides)
    try:
        return config_from_dict(PipelineConfig, values)
    except ValueError as exc:
        if config:  # name the file: the value may come from it
            raise UserError(f"--config {config} (with --set overrides): {exc}") from None
        raise


def write_run_config(run_dir: Path, cfg: Any, argv: list[str]) -> Path:
    """Record the run in ``<run_dir>/config.json``, which is never overwritten by another config.

    The first run of a directory writes it; a later run with the same config leaves it as it is; a run
    with another config writes ``config-<UTC time>.json`` beside it (its checkpoints are checked against
    the settings that produced them before any reuse, see :func:`testtime.train.pipeline.check_reuse`).
    """
    from testtime.config import config_to_dict, identity_dict, strip_later_fields
    from testtime.train.checkpoint import _atomic_write, environment

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    mine = json.loads(json.dumps(identity_dict(cfg), default=str))  # later fields at their old value: as before
    if path.is_file():
        try:
            prev = json.loads(path.read_text()).get("config")
        except (OSError, ValueError, AttributeError):
            prev = None
        if strip_later_fields(prev) == mine:
            return path
        path = run_dir / f"config-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
        print(f"note: {run_dir / 'config.json'} records another config; this run's goes to {path.name}",
              file=sys.stderr)
    info = {
        "command": "testtime " + " ".join(argv),
        "config": config_to_dict(cfg),
        "seed": cfg.seed,
        "device": cfg.device,
        "environment": environment(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    _atomic_write(path, json.dumps(info, indent=2).encode())
    return path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="a shipped preset: cifar10-cpu, fmnist-cpu, paper, demo")
    p.add_argument("--config", help="a YAML file with the same structure as the presets")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set ssl.train.epochs=3 (repeatable)",
    )
    p.add_argument("--run-dir", help="where checkpoints and results go (default: runs/<preset name>)")
    p.add_argument("--quiet", action="store_true", help="no per-step log lines")


def register(subparsers: argparse._SubParsersAction) -> None:
    from testtime.config import STAGES

    p = subparsers.add_parser(
        "train",
        help="run one source-time stage of CTA (and its prerequisites)",
        description=plain(TRAIN_DESCRIPTION + COMMON_TEXT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from testtime.train.peer_stages import PEER_STAGES
    from testtime.train.ttt_stages import AUX_STAGES

    p.add_argument(
        "stage",
        choices=STAGES + AUX_STAGES + PEER_STAGES,
        help="supervised | ssl | align | probe | joint | ttt | ttt++ | clust3 | nc-ttt | rec-ttt "
        "(the baselines' source training)",
    )
    _common(p)
    p.add_argument("--eval-clean", action="store_true",
                   help="then print the clean accuracy of every model of the stage and its prerequisites on the "
                   "whole test split (eval mode, and with the test batch's BN statistics)")
    p.set_defaults(func=run_train)
    q = subparsers.add_parser(
        "cta",
        help="CTA end to end: every stage, then evaluation on corruptions",
        description=plain(CTA_DESCRIPTION + COMMON_TEXT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(q)
    q.add_argument("--stages-only", action="store_true", help="train, do not evaluate")
    q.set_defaults(func=run_cta)


def prepare(args: argparse.Namespace, stages: tuple[str, ...]) -> tuple[Any, Path, Any]:
    """The validated config, the run directory and the data, every check done before any training or writing:
    the config, the device, the data, and the checkpoints of ``stages`` already in the run directory. Under
    torchrun also the process group (and this rank's device)."""
    from testtime.train.distributed import init_from_env
    from testtime.train.pipeline import check_run_dir, check_runnable, load_data

    cfg = load_config(args.preset, args.config, args.overrides)
    check_runnable(cfg)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    try:
        device = init_from_env(cfg.device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if device != cfg.device:
        cfg = dataclasses.replace(cfg, device=device)
    data = load_data(cfg.data)
    check_runnable(cfg, data)
    check_run_dir(cfg, run_dir, data.train, stages)
    return cfg, run_dir, data


def _start(args: argparse.Namespace, cfg: Any, run_dir: Path):
    """Rank 0 writes config.json; the logger (None on other ranks and with --quiet)."""
    from testtime.train.distributed import barrier, is_main

    if is_main():
        write_run_config(run_dir, cfg, sys.argv[1:])
    barrier()
    return None if args.quiet or not is_main() else print


def run_train(args: argparse.Namespace) -> int:
    from testtime.train.distributed import shutdown

    try:
        return _run_train(args)
    finally:
        shutdown()


def run_cta(args: argparse.Namespace) -> int:
    from testtime.train.distributed import shutdown

    try:
        return _run_cta(args)
    finally:
        shutdown()


def _run_train(args: argparse.Namespace) -> int:
    from testtime.train.distributed import is_main
    from testtime.train.peer_stages import PEER_STAGES
    from testtime.train.pipeline import STAGES, run_stages

    cfg, run_dir, data = prepare(args, (args.stage,) if args.stage in STAGES else ("supervised",))
    log = _start(args, cfg, run_dir)
    say = print if is_main() else (lambda _: None)
    if args.stage in ("ttt", "ttt++"):  # the TTT / TTT++ baselines: same trainer, their heads and losses
        from testtime.train.ttt_stages import train_aux_stage

        model = train_aux_stage(cfg, run_dir, data, args.stage, log=log)
        say(f"{args.stage}: {run_dir / args.stage}")
    elif args.stage in PEER_STAGES:  # the CTA paper's peers with layer heads: same trainer, their heads
        from testtime.train.peer_stages import train_peer_stage

        model = train_peer_stage(cfg, run_dir, data, args.stage, log=log)
        say(f"{args.stage}: {run_dir / args.stage}")
    else:
        models = run_stages(cfg, run_dir, data, stages=(args.stage,), log=log)
        fitres = models.fits[args.stage]
        say(f"{args.stage}: {fitres.checkpoint or run_dir} ({fitres.wall_s:.0f}s)")
    if args.eval_clean and is_main():
        named = models.named() if args.stage not in ("ttt", "ttt++", *PEER_STAGES) else [(args.stage, model)]
        print_clean_accuracy(named, data.pool if data.pool is not None else data.test, cfg)
    return 0


def print_clean_accuracy(named: list[tuple[str, Any]], split: Any, cfg: Any) -> None:
    """Clean accuracy of each (label, model) on ``split`` (batches of 256 in a seeded shuffle), as a table."""
    from testtime.bench.evaluation import clean_accuracies

    print(f"clean accuracy (%) on {split.name} ({len(split)} images), seed {cfg.seed}:")
    print("| model | eval mode | test-batch BN |\n|---|---:|---:|")
    for label, acc, bn, _ in clean_accuracies(named, split, device=cfg.device, seed=cfg.seed):
        print(f"| {label} | {acc:.2f} | {bn:.2f} |", flush=True)


def _run_cta(args: argparse.Namespace) -> int:
    from testtime.train.distributed import is_main
    from testtime.train.pipeline import STAGES, evaluate_pipeline, results_table, run_stages

    t0 = time.perf_counter()
    cfg, run_dir, data = prepare(args, STAGES)
    log = _start(args, cfg, run_dir)
    models = run_stages(cfg, run_dir, data, log=log)
    if not is_main():  # evaluation runs on rank 0 only
        return 0
    print(f"stages done in {time.perf_counter() - t0:.0f}s; checkpoints in {run_dir}", flush=True)
    if args.stages_only:
        return 0
    results = evaluate_pipeline(cfg, models, data, run_dir, log=log)
    print(results_table(results))
    print(f"total wall time {time.perf_counter() - t0:.0f}s; results in {run_dir / 'results.json'}")
    return 0

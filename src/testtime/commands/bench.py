"""``testtime bench``: a grid of methods from one YAML file, or the baselines on a preset.

A grid (``testtime bench CONFIG``; CONFIG is a YAML file or a shipped bench config, see
docs/benchmark.md)::

    testtime bench cifar10-cpu-bench --set source.data.root=/data/cifar10-jpeg
    testtime bench my-grid.yaml --set eval_seeds=[0] --set methods.tent.candidates.lr=[1e-3] --shard 0/4
    testtime bench cifar10-cpu-bench --only memo,ttt --stop-by 2h30m      # or "2026-12-07 18:00" (UTC)

methods x protocols x corruptions x severities x eval seeds, hyperparameters chosen on the held-out
corruptions; every cell (accuracy and cost) goes to ``<run-dir>/results.sqlite`` as soon as it is
measured (the run dir defaults to ``runs/<source preset name>``, where ``testtime train`` / ``testtime
cta`` put that preset's checkpoints, which are reused): run the same command again to resume;
``--shard i/n`` splits the grid between jobs; ``--stop-by`` starts no cell expected to end after a
time (a session's or an allocation's end: nothing is lost half-run); ``testtime report RUN_DIR``
makes the tables. Log: ``<run-dir>/bench.log`` and ``grid.log``.

The baselines on a preset (flags only; results in ``bench-<protocol>.json``)::

    testtime bench --preset cifar10-cpu --methods source,bn,tent,eata,sar,cotta,memo,ttt,ttt++
    testtime bench --preset cifar10-cpu --methods tent --protocol reset-per-domain --method-set tent.lr=1e-4

The preset's supervised checkpoint in ``--run-dir`` (default ``runs/<preset>``) is loaded, or trained
when missing (as ``testtime train supervised`` would); ``ttt`` / ``ttt++`` / ``clust3`` / ``nc-ttt`` /
``rec-ttt`` load or train their own source models. Results go to ``<run-dir>/bench-<protocol>.json``
and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import calendar
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from testtime.cli import UserError
from testtime.commands import plain


def register(subparsers: argparse._SubParsersAction) -> None:
    from testtime.bench.protocols import list_protocols

    p = subparsers.add_parser("bench", help="a grid of methods from a YAML file (or baselines on a preset)",
                              description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    from testtime.commands.train import _common

    p.add_argument("grid", nargs="?", metavar="CONFIG", help="a bench YAML file or shipped bench config (grid mode)")
    p.add_argument("--shard", metavar="I/N", help="grid mode: run every N-th cell from the I-th (default: the "
                   "whole grid; under torchrun, RANK/WORLD_SIZE)")
    p.add_argument("--only", metavar="LABELS", help="grid mode: run only these of the config's method labels "
                   "(comma-separated); their cells are the same as in the whole grid's run")
    p.add_argument("--stop-by", metavar="WHEN", help="grid mode: start no cell expected to end after WHEN: "
                   "'YYYY-MM-DD HH:MM' or 'HH:MM' (UTC; the next such time) or a duration (90m, 2h, 2h30m); "
                   "the same command resumes")
    _common(p)  # --preset, --config, --set, --run-dir, --quiet: the same as `testtime train`
    p.add_argument("--methods", help="comma-separated registered methods (see `testtime methods`; default: "
                   "source,bn,tent,eata,sar,cotta,memo,ttt,ttt++)")
    p.add_argument("--protocol", choices=list_protocols(), help="default: the preset's test-time protocol")
    p.add_argument("--batch-size", type=int, help="default: the preset's test-time batch size")
    p.add_argument("--order", choices=("before", "after", "method"),
                   help="predict each batch before or after its update (default: each method's own order)")
    p.add_argument("--method-set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="override a method's config field, e.g. tent.lr=1e-4 (repeatable)")
    p.add_argument("--out", help="results file (default: <run-dir>/bench-<protocol>[-<order>].json)")
    p.set_defaults(func=run)


def parse_method_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, fld = key.rpartition(".")
        if not sep or not dot or not name or not fld:
            raise UserError(f"--method-set: expected METHOD.FIELD=VALUE, got {item!r}")
        out.setdefault(name, {})[fld] = _scalar(yaml.safe_load(value))
    return out


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string: numbers written that way become floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge_previous(path: Path, out: dict[str, Any]) -> dict[str, Any]:
    """Keep the rows of an earlier run in ``path`` measured under the same protocol and test subset.

    So ``--methods a,b`` then ``--methods c`` gives one file with a, b and c; a row measured again
    replaces the old one. Each row keeps the command that produced it.
    """
    for row in out["rows"].values():
        row["command"] = out["command"]
    if not path.is_file():
        return out
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return out
    fresh = json.loads(json.dumps(out, default=str))  # tuples -> lists, as in the file
    same = all(prev.get(k) == fresh.get(k) for k in ("protocol", "test_subset", "severity", "config"))
    if not same:
        return out
    rows = {k: v for k, v in prev.get("rows", {}).items() if k not in out["rows"]}
    rows.update(out["rows"])
    return {**out, "rows": rows}


FLAG_ONLY = ("preset", "config", "methods", "protocol", "batch_size", "order", "method_set", "out")


def run(args: argparse.Namespace) -> int:
    if args.grid is not None:
        return run_grid_config(args)
    return run_flags(args)


def run_grid_config(args: argparse.Namespace) -> int:
    from testtime.bench.experiment import run_bench
    from testtime.bench.spec import default_run_dir, load_bench_config
    from testtime.train.distributed import grid_shard

    given = [f"--{k.replace('_', '-')}" for k in FLAG_ONLY if getattr(args, k) not in (None, [])]
    if given:
        raise UserError(f"{', '.join(given)}: not with a bench CONFIG (set them in the YAML file, or with --set)")
    stop_by = None if args.stop_by is None else parse_stop_by(args.stop_by)
    shard = grid_shard(args.shard)
    bench = only_methods(load_bench_config(args.grid, args.overrides), args.only)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(bench)
    t0 = time.perf_counter()
    summary = run_bench(bench, run_dir, shard=shard, log=None if args.quiet else print, progress=not args.quiet,
                        stop_by=stop_by)
    print(f"{bench.name}: {summary.ran} cells measured, {summary.skipped} already stored, "
          f"{summary.in_shard} in shard {shard[0]}/{shard[1]} of {summary.total} ({time.perf_counter() - t0:.0f}s); "
          f"store {run_dir / 'results.sqlite'}; tables: testtime report {run_dir}")
    if summary.left:
        print(f"stopped by --stop-by {args.stop_by}: {summary.left} cells left; the same command resumes")
    return 0


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?")


def parse_stop_by(text: str, now: float | None = None) -> float:
    """``--stop-by``: seconds since the epoch of 'YYYY-MM-DD HH:MM' (UTC), of the next 'HH:MM' (UTC), or of
    now plus a duration ('90m', '2h', '2h30m'). A time already passed is refused."""
    now = time.time() if now is None else now
    text = str(text).strip()
    usage = f"--stop-by: expected 'YYYY-MM-DD HH:MM' or 'HH:MM' (UTC) or a duration like 90m or 2h30m; got {text!r}"
    duration = _DURATION.fullmatch(text)
    if duration and any(duration.groups()):
        hours, minutes = (int(g or 0) for g in duration.groups())
        if hours * 60 + minutes == 0:
            raise UserError(f"--stop-by: the duration must be more than 0 minutes; got {text!r}")
        return now + 3600 * hours + 60 * minutes
    for fmt in ("%Y-%m-%d %H:%M", "%H:%M"):
        try:
            parsed = time.strptime(text, fmt)
        except ValueError:
            continue
        if fmt == "%H:%M":
            today = time.gmtime(now)
            at = calendar.timegm((today.tm_year, today.tm_mon, today.tm_mday, parsed.tm_hour, parsed.tm_min, 0))
            return at if at > now else at + 86400
        at = calendar.timegm(parsed)
        if at <= now:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(now))
            raise UserError(f"--stop-by: {text} UTC has passed (now {stamp} UTC)")
        return at
    raise UserError(usage)


def only_methods(bench: Any, only: str | None) -> Any:
    """``bench`` restricted to the method labels in ``only`` (comma-separated; None: all of them)."""
    if only is None:
        return bench
    labels = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [lab for lab in labels if lab not in bench.methods]
    if not labels or unknown:
        raise UserError(f"--only: {', '.join(unknown) or 'no label given'}: not a method label of {bench.name}; "
                        f"valid: {', '.join(bench.methods)}")
    return dataclasses.replace(bench, methods={lab: bench.methods[lab] for lab in labels})


def run_flags(args: argparse.Namespace) -> int:
    from testtime.bench.evaluation import results_table
    from testtime.bench.grid import method_configs, resolve_protocol, run_methods
    from testtime.commands.train import load_config
    from testtime.config import check_runnable, config_to_dict
    from testtime.data.experiment import load_data
    from testtime.methods import METHODS
    from testtime.train.checkpoint import _atomic_write, environment

    if args.shard is not None:
        raise UserError("--shard: only with a bench CONFIG (testtime bench CONFIG.yaml --shard I/N)")
    if args.only is not None:
        raise UserError("--only: only with a bench CONFIG (testtime bench CONFIG.yaml --only tent,bn)")
    if args.stop_by is not None:
        raise UserError("--stop-by: only with a bench CONFIG (testtime bench CONFIG.yaml --stop-by 2h)")
    args.methods = args.methods if args.methods is not None else "source,bn,tent,eata,sar,cotta,memo,ttt,ttt++"
    args.order = args.order or "method"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods: give at least one method")
    for m in methods:
        METHODS.canonical(m)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    overrides = parse_method_overrides(args.method_set)
    order = None if args.order == "method" else args.order
    cfg = load_config(args.preset, args.config, args.overrides)
    check_runnable(cfg)
    method_configs(methods, overrides)  # every method's config and the protocol, checked before any work
    resolve_protocol(cfg, args.protocol, args.batch_size, order)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    t0 = time.perf_counter()
    data = load_data(cfg.data)
    check_runnable(cfg, data)
    out = run_methods(cfg, run_dir, data, methods, protocol=args.protocol, batch_size=args.batch_size,
                      order=order, method_overrides=overrides, log=None if args.quiet else print)
    out["command"] = "testtime " + " ".join(getattr(args, "argv", sys.argv[1:]))
    out["config"] = config_to_dict(cfg)
    out["seed"] = cfg.seed
    out["environment"] = environment()
    out["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    out["wall_s"] = time.perf_counter() - t0
    name = (args.protocol or cfg.ttt.protocol) + ("" if order is None else f"-{order}")
    path = Path(args.out) if args.out else run_dir / f"bench-{name}.json"
    out = merge_previous(path, out)
    _atomic_write(path, json.dumps(out, indent=2, default=str).encode())
    print(out["protocol"])
    print(results_table(out))
    print(f"wrote {path} ({out['wall_s']:.0f}s)")
    return 0

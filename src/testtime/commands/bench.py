"""``testtime bench``: the baselines on a preset, next to CTA (same weights, data, subset, protocol).

Examples::

    testtime bench --preset cifar10-cpu --methods source,bn,tent,eata,sar,cotta,memo,ttt,ttt++
    testtime bench --preset cifar10-cpu --methods tent --protocol reset-per-domain --method-set tent.lr=1e-4

The preset's supervised checkpoint in ``--run-dir`` (default ``runs/<preset>``) is loaded, or trained
when missing (as ``testtime train supervised`` would); ``ttt`` / ``ttt++`` / ``clust3`` / ``nc-ttt`` /
``rec-ttt`` load or train their own source models. Results go to ``<run-dir>/bench-<protocol>.json``
and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from testtime.cli import UserError
from testtime.commands import plain


def register(subparsers: argparse._SubParsersAction) -> None:
    from testtime.bench.protocols import list_protocols

    p = subparsers.add_parser("bench", help="evaluate baselines on a preset's corrupted test subset",
                              description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    from testtime.commands.train import _common

    _common(p)  # --preset, --config, --set, --run-dir, --quiet: the same as `testtime train`
    p.add_argument("--methods", default="source,bn,tent,eata,sar,cotta,memo,ttt,ttt++",
                   help="comma-separated registered methods (see `testtime methods`)")
    p.add_argument("--protocol", choices=list_protocols(), help="default: the preset's test-time protocol")
    p.add_argument("--batch-size", type=int, help="default: the preset's test-time batch size")
    p.add_argument("--order", choices=("before", "after", "method"), default="method",
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


def run(args: argparse.Namespace) -> int:
    from testtime.bench.grid import method_configs, resolve_protocol, run_methods
    from testtime.commands.train import load_config
    from testtime.methods import METHODS
    from testtime.train.checkpoint import _atomic_write, environment
    from testtime.train.pipeline import check_runnable, config_to_dict, load_data, results_table

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

"""``testtime methods``: list the registered test-time methods, or show one with its defaults.

Examples::

    testtime methods                 # name, what it adapts, what it needs (views, smallest batch), batch size 1,
                                     # order, paper
    testtime methods --json          # the same as JSON
    testtime methods eata            # one method: requirements, config defaults (the paper's), docstring
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys

from testtime.cli import UserError
from testtime.commands import plain


def method_info(name: str) -> dict:
    """What ``testtime methods`` prints for one registered method."""
    from testtime.methods import METHODS

    cls = METHODS.get(name)
    req = cls.requirements
    needs = [n for n, on in (("BN layers", req.needs_bn), ("source data", req.needs_source_data),
                             ("aux head from source training", req.needs_aux_head)) if on]
    return {
        "name": name,
        "adapts": req.adapts,
        "needs": needs,
        "views": req.views,
        "batch_size_1": req.supports_batch_size_1,
        "min_batch_size": req.min_batch_size,
        "default_order": cls.default_order,
        "paper": paper_of(cls),
    }


def paper_of(cls: type) -> str:
    """``cls.paper`` if set, else the first line of the method's module docstring that cites a year."""
    paper = getattr(cls, "paper", None)
    if paper:
        return str(paper)
    doc = inspect.getdoc(sys.modules.get(cls.__module__)) or ""
    for para in doc.split("\n\n"):
        text = " ".join(para.split())
        m = re.search(r"\b(19|20)\d\d\b", text)
        if m:
            cite = text[: m.end()]
            return cite + ")" * max(0, cite.count("(") - cite.count(")"))
    return "-"


def _needs_text(info: dict) -> str:
    """The table's "needs" cell: the requirements, plus the views and the smallest batch when they matter."""
    needs = list(info["needs"])
    if info["views"] != "none":
        needs.append(f"{info['views']} views")
    if info["min_batch_size"] > 1:
        needs.append(f"batches >= {info['min_batch_size']}")
    return ", ".join(needs) or "-"


def _config_defaults(name: str) -> dict:
    from testtime.methods import METHODS

    cfg = METHODS.get(name).Config()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def run(args: argparse.Namespace) -> int:
    from testtime.methods import METHODS, list_methods

    if args.name:
        try:
            cls = METHODS.get(args.name)
        except KeyError:
            raise UserError(f"unknown method {args.name!r}; valid: {', '.join(list_methods())}") from None
        info = method_info(args.name)
        info["config"] = _config_defaults(args.name)
        if args.json:
            print(json.dumps(info, indent=2, default=str))
            return 0
        print(f"{args.name}: {cls.requirements.describe()}")
        print(f"  default order: predict {info['default_order']} the update; paper: {info['paper']}")
        print("  config defaults:")
        for k, v in info["config"].items():
            print(f"    {k} = {v!r}")
        doc = inspect.getdoc(cls)
        if doc:
            print()
            print(doc)
        return 0
    rows = [method_info(n) for n in list_methods()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("name", "adapts", "needs", "bs=1", "order", "paper")]
    for r in rows:
        table.append((r["name"], r["adapts"], _needs_text(r), "yes" if r["batch_size_1"] else "no",
                      r["default_order"], r["paper"]))
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t[:5], widths)) + "  " + t[5])
    return 0


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the test-time methods (what they adapt and need)",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="show one method: requirements, config defaults, description")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)

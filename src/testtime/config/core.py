"""Typed configs from plain dicts: the one config system of every command (YAML, ``--set`` overrides).

Configs are frozen dataclasses next to the code they configure. A YAML file (or a shipped preset) is
read into a plain dict, ``--set key.sub=value`` overrides are applied to the dict, and
:func:`config_from_dict` builds the typed config, checking every key and value before any work:

- a key that no config has fails naming the key, the valid keys and the closest one (difflib);
- a value of the wrong type fails naming the dotted key and what was expected.

Example::

    values = apply_overrides(read_yaml("name: x\\nttt: {lr: 1e-4}", "x.yaml"), ["ttt.steps=5"])
    cfg = config_from_dict(PipelineConfig, values)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any


def closest(name: str, valid: Sequence[str]) -> str | None:
    """The valid name closest to ``name`` (difflib), or None when nothing is close."""
    hits = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return hits[0] if hits else None


def unknown_key_message(where: str, unknown: Sequence[str], valid: Sequence[str]) -> str:
    """``unknown key(s) a.bogus; valid: x, y (did you mean 'a.bogs'?)``."""
    prefix = where + "." if where else ""
    hints = [f"{prefix}{u} -> {prefix}{c}" for u in unknown if (c := closest(u, valid))]
    msg = f"unknown key(s) {', '.join(prefix + u for u in unknown)}; valid: {', '.join(valid)}"
    if len(hints) == 1 and len(unknown) == 1:
        return msg + f" (did you mean '{hints[0].split(' -> ')[1]}'?)"
    return msg + (f" (did you mean: {'; '.join(hints)}?)" if hints else "")


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
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_build(kt, k, where): _build(vt, v, f"{where}.{k}") for k, v in value.items()}
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
    """Build the frozen dataclass ``cls`` from a nested dict; unknown keys fail naming the closest valid one."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(unknown_key_message(where, unknown, names))
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


# Fields added to a config after checkpoints and stored bench cells were keyed on it, each with the
# value that means "as before". A config's identity (what checkpoint reuse compares and what cell keys
# hash) leaves such a field out while it holds that value, so the checkpoints and cells written before
# the field existed still match. Matched by field name at any depth.
LATER_FIELDS: dict[str, Any] = {
    "cutout": 0,  # TrainConfig.cutout (2026-12-01)
    "lookahead_every": 0,  # TrainConfig.lookahead_every and lookahead_decay (airbench94's Lookahead EMA)
    "lookahead_decay": 0.95**5,
    "frozen_params": (),  # TrainConfig.frozen_params and bn_bias_lr_scale (airbench94's parameter groups)
    "bn_bias_lr_scale": 1.0,
    "conv_init": "default",  # ModelConfig.conv_init (airbench94's identity init of the 3x3 convolutions)
}


def _is_old_value(key: str, value: Any) -> bool:
    """Whether ``value`` is the :data:`LATER_FIELDS` value of ``key`` (a JSON list reads as the tuple)."""
    old = LATER_FIELDS[key]
    if isinstance(old, tuple) and isinstance(value, list | tuple):
        return tuple(value) == old
    return bool(value == old)


def strip_later_fields(value: Any) -> Any:
    """``value`` (a config as nested dicts and lists) without the :data:`LATER_FIELDS` at their old value."""
    if isinstance(value, dict):
        return {k: strip_later_fields(v) for k, v in value.items()
                if not (k in LATER_FIELDS and _is_old_value(k, v))}
    if isinstance(value, list | tuple):
        return type(value)(strip_later_fields(v) for v in value)
    return value


def identity_dict(cfg: Any) -> dict[str, Any]:
    """:func:`config_to_dict` as a config's identity: without the :data:`LATER_FIELDS` at their old value."""
    return strip_later_fields(config_to_dict(cfg))


def read_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse YAML text into a mapping (empty text -> {}); ``where`` names the source in errors."""
    import yaml

    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    return values

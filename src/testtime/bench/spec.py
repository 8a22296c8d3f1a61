"""The bench grid's config: one YAML file -> methods x protocols x corruptions x severities x eval seeds.

A bench config names a **source preset** (``preset: cifar10-cpu``, with ``source:`` overrides of its
fields): it says which models are trained, and so which stage checkpoints in the run dir are loaded
(or trained once, then reused). The rest says what is measured::

    preset: demo
    corruptions: [gaussian_noise, fog]        # default: the 15 benchmark corruptions
    severities: [5]
    eval_seeds: [0, 1, 2]                     # test subset and corruption draws, not training
    protocols: [reset-per-domain]             # default for methods that do not name theirs
    methods:
      tent:                                   # the label (a column of the report)
        protocols: [reset-per-domain, continual]
        settings: {steps: 1}                  # fields of the method's Config
        candidates: {lr: [1.0e-4, 1.0e-3]}    # chosen on the held-out corruptions, per protocol
      cta-0: {method: cta, settings: {steps: 0}}

Any key can be overridden with ``--set`` (``--set methods.tent.candidates.lr=[1e-3]``,
``--set source.data.root=/data/cifar10-jpeg``). Keys are checked before any work: an unknown one
fails naming the closest valid key.

Example::

    bench = load_bench_config("tiny", ["eval_seeds=[0]"])
    plans = expand(bench)            # (label, protocol) pairs, in grid order
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from testtime.config import apply_overrides, config_from_dict, read_yaml
from testtime.config.pipeline import HELDOUT_4, PipelineConfig
from testtime.data.names import CORRUPTIONS_15

SOURCE_KINDS = ("supervised", "aligned", "probe", "joint", "ttt", "ttt++", "clust3", "nc-ttt", "rec-ttt")


@dataclass(frozen=True)
class MethodSpec:
    """One column of the grid: a registered method with its settings and hyperparameter candidates."""

    method: str | None = None  # the registered name; None = the label
    model: str | None = None  # the source model (SOURCE_KINDS); None = the method's own
    protocols: tuple[str, ...] | None = None  # None = the bench's ``protocols``
    order: str | None = None  # "before" | "after"; None = the method's own order
    settings: dict[str, Any] = field(default_factory=dict)  # fields of the method's Config
    candidates: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # field -> values tried on held-out


@dataclass(frozen=True)
class BenchConfig:
    name: str = "bench"
    run_dir: str | None = None  # None: runs/<the source preset's name>, where its checkpoints are
    preset: str | None = None  # the source preset (testtime/configs/<preset>.yaml); None = the dataclass defaults
    source: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    corruptions: tuple[str, ...] = CORRUPTIONS_15
    severities: tuple[int, ...] = (5,)
    eval_seeds: tuple[int, ...] = (0,)
    protocols: tuple[str, ...] = ("reset-per-domain",)
    batch_size: int = 128
    heldout: tuple[str, ...] = HELDOUT_4  # where candidates are chosen (never the test corruptions)
    heldout_severity: int = 5
    fisher_samples: int = 2000  # clean training images for methods that need source data (EATA)
    methods: dict[str, MethodSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from testtime.bench.protocols import list_protocols
        from testtime.config import NAME_RE, check_range
        from testtime.corruptions import list_corruptions

        if not NAME_RE.fullmatch(self.name) or set(self.name) == {"."}:
            raise ValueError(f"name must be a plain name (letters, digits, '.', '_', '-'), got {self.name!r}")
        for key in ("corruptions", "severities", "eval_seeds", "protocols", "heldout"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: listed twice: {sorted({v for v in values if values.count(v) > 1})}")
        for s in self.eval_seeds:
            check_range("eval_seeds[i]", s, lo=0)
        check_range("fisher_samples", self.fisher_samples, lo=1)
        valid = list_corruptions()
        for key, names in (("corruptions", self.corruptions), ("heldout", self.heldout)):
            bad = [c for c in names if c not in valid]
            if bad:
                raise ValueError(f"{key}: unknown corruption(s) {bad}; valid: {', '.join(valid)}")
        test_in_heldout = sorted(set(self.corruptions) & set(self.heldout))
        if test_in_heldout:
            raise ValueError(f"heldout: {test_in_heldout} are test corruptions; choose on other corruptions")
        for s in (*self.severities, self.heldout_severity):
            if not 1 <= s <= 5:
                raise ValueError(f"severities: each severity must be 1..5, got {s}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for label, spec in self.methods.items():
            for p in spec.protocols or self.protocols:
                if p not in list_protocols() or p in ("mixed",):
                    raise ValueError(f"methods.{label}.protocols: {p!r} is not a per-corruption protocol; valid: "
                                     "episodic, reset-per-domain, continual, single-sample, label-shift")
            if spec.model is not None and spec.model not in SOURCE_KINDS:
                raise ValueError(f"methods.{label}.model: {spec.model!r}; valid: {', '.join(SOURCE_KINDS)}")
            if spec.order not in (None, "before", "after"):
                raise ValueError(f"methods.{label}.order: {spec.order!r}; valid: before, after")
            empty = [k for k, v in spec.candidates.items() if not v]
            if empty:
                raise ValueError(f"methods.{label}.candidates.{empty[0]}: give at least one value")


def list_bench_configs() -> list[str]:
    files = resources.files("testtime.configs").joinpath("bench")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_bench_config(config: str, overrides: list[str] = ()) -> BenchConfig:
    """Read a bench YAML file (a path, or the name of a shipped one), apply ``--set`` overrides, check it."""
    path = Path(config)
    if path.is_file():
        text = path.read_text()
    elif config in list_bench_configs():
        text = resources.files("testtime.configs").joinpath("bench").joinpath(f"{config}.yaml").read_text()
    else:
        raise FileNotFoundError(f"bench config {config!r}: no such file, nor a shipped bench config "
                                f"({', '.join(list_bench_configs())})")
    values = apply_overrides(read_yaml(text, config), list(overrides))
    bench = config_from_dict(BenchConfig, values)
    source_config(bench)  # the source preset's keys are checked before any work, too
    check_methods(bench)
    return bench


def source_config(bench: BenchConfig) -> PipelineConfig:
    """The source preset of ``bench`` with its ``source:`` overrides, as a typed PipelineConfig."""
    from testtime.commands.train import list_presets

    values: dict[str, Any] = {}
    if bench.preset is not None:
        if bench.preset not in list_presets():
            raise ValueError(f"preset: unknown preset {bench.preset!r}; valid: {', '.join(list_presets())}")
        text = resources.files("testtime.configs").joinpath(f"{bench.preset}.yaml").read_text()
        values = read_yaml(text, bench.preset)
    return config_from_dict(PipelineConfig, _merge(values, bench.source), "source" if bench.source else "")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def method_name(label: str, spec: MethodSpec) -> str:
    from testtime.methods import METHODS

    return METHODS.canonical(spec.method or label)


def method_config(label: str, spec: MethodSpec, chosen: dict[str, Any] | None = None,
                  where: str = "settings") -> Any:
    """The method's typed Config: its defaults, ``settings``, then the chosen candidate values (type- and
    range-checked, errors naming ``methods.<label>.<where>.<field>``; ``steps: 0`` allowed)."""
    from testtime.bench.grid import method_config as checked_config

    values = {**spec.settings, **(chosen or {})}
    return checked_config(method_name(label, spec), values, where=f"methods.{label}.{where}", zero_steps=True)


def candidate_sets(spec: MethodSpec) -> list[dict[str, Any]]:
    """Every combination of the candidates (one empty dict when there are none)."""
    keys = sorted(spec.candidates)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec.candidates[k] for k in keys))]


def check_methods(bench: BenchConfig) -> None:
    """Every method is registered, every setting and candidate a field of its Config (before any work)."""
    if not bench.methods:
        raise ValueError("methods: the grid has no methods (zero cells); add at least one under methods:")
    if not (bench.corruptions and bench.severities and bench.eval_seeds):
        raise ValueError("the grid has zero cells: corruptions, severities and eval_seeds must each be non-empty")
    for label, spec in bench.methods.items():
        try:
            method_name(label, spec)
        except KeyError as exc:
            raise ValueError(f"methods.{label}: {exc.args[0]} (or set methods.{label}.method)") from None
        method_config(label, spec)  # the settings alone first, so an error names where the bad value is
        for cand in candidate_sets(spec):
            method_config(label, spec, cand, where="candidates")
        if any(k in spec.settings for k in spec.candidates):
            raise ValueError(f"methods.{label}: {sorted(set(spec.settings) & set(spec.candidates))} are both "
                             "settings and candidates")


def expand(bench: BenchConfig) -> list[tuple[str, str]]:
    """The (label, protocol) pairs of the grid, in config order."""
    return [(label, p) for label, spec in bench.methods.items() for p in (spec.protocols or bench.protocols)]


def default_run_dir(bench: BenchConfig) -> Path:
    """``run_dir``, or ``runs/<source name>``: the run dir of ``testtime train/cta --preset <name>``."""
    return Path(bench.run_dir) if bench.run_dir else Path("runs") / source_config(bench).name


def bench_to_dict(bench: BenchConfig) -> dict[str, Any]:
    return dataclasses.asdict(bench)

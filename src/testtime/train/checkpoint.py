"""Checkpoints as safetensors with a JSON sidecar (config, versions, sha256 content hash).

Layout for a checkpoint named ``<dir>/<name>``:

- ``<name>.safetensors``: tensors only (weights, buffers, optimiser moments); never pickle.
- ``<name>.json``: ``{"format", "sha256", "meta": {...}}``; ``sha256`` is the hash of the
  safetensors file's bytes, checked BEFORE any tensor is parsed, so a truncated or corrupted file
  fails with a clear error and is never half-read.

Both files are written under temporary names in the same directory and moved into place with
``os.replace`` (the safetensors file first, then the sidecar that vouches for it).

Example::

    save_checkpoint("runs/x/supervised", {"model.fc.weight": w}, {"arch": "resnet8"})
    tensors, meta = load_checkpoint("runs/x/supervised")
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

FORMAT = "testtime-checkpoint-v1"


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def checkpoint_exists(path: str | os.PathLike) -> bool:
    st, js = _paths(path)
    return st.is_file() and js.is_file()


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@functools.cache
def git_commit_of(here: Path) -> str | None:
    """The commit of the checkout that holds the file ``here`` (this package's: an editable install),
    else None; asked once per process and file (the code that runs is the one imported). ``None`` also
    when ``here`` is not tracked by the enclosing repository (e.g. an install into a virtual
    environment inside some other project's checkout), so another repository's commit is never
    recorded."""
    import subprocess

    try:
        git = ["git", "-C", str(here.parent)]
        subprocess.run([*git, "ls-files", "--error-unmatch", here.name], capture_output=True, timeout=5, check=True)
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str | torch.device = "cpu") -> str:
    """Where a measurement runs, as a results store keeps it beside a cell: ``cpu (<model>, <ISA>,
    <n> threads)`` (the instruction set torch dispatches to and its threads change the rounding, see
    :func:`environment`) or ``cuda (<GPU name>)``; another device type by its name."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def environment() -> dict[str, str]:
    """Versions and machine written beside every checkpoint and result.

    Pillow is listed because it decodes the JPEG / PNG datasets (another decoder build can change
    decoded pixels), and the git commit (when the package runs from a checkout) because the version
    string does not change between commits: a model retrained in another environment is only
    comparable bit for bit when all of these match. So are the CPU and the instruction set that
    torch's kernels dispatch to (``cpu_capability``: e.g. AVX2 or AVX512): the same command and
    seed trained the cifar10-cpu preset's 18-epoch supervised model (attempt 9) to 89.95 % on the machine
    of the 2026-12-02 rebuild and to 89.47 % on an AVX2-only AMD EPYC (docs/results.md, "A second
    supervised model"), because other kernels round in another order and 18 epochs of SGD amplify the
    difference.
    """
    import PIL

    from testtime import __version__

    env = {
        "testtime": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": str(torch.get_num_threads()),
        "cpu_model": cpu_model(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }
    commit = git_commit_of(Path(__file__).resolve())
    if commit is not None:
        env["git_commit"] = commit
    return env


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (contiguous CPU copies) and ``meta`` (JSON-serialisable) atomically."""
    st, js = _paths(path)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = st_save(clean)
    digest = hashlib.sha256(data).hexdigest()
    side = {"format": FORMAT, "sha256": digest, "meta": meta, "environment": environment()}
    _atomic_write(st, data)
    _atomic_write(js, json.dumps(side, indent=2, sort_keys=True, default=str).encode())
    return st


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar's ``meta`` (no tensor is read)."""
    _, js = _paths(path)
    if not js.is_file():
        raise FileNotFoundError(f"checkpoint sidecar not found: {js}")
    try:
        side = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint sidecar {js} is not valid JSON ({exc}); the checkpoint is corrupted") from exc
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        fmt = side.get("format") if isinstance(side, dict) else None
        raise ValueError(f"{js}: not a testtime checkpoint (format {fmt!r}, expected {FORMAT!r})")
    digest = side.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise ValueError(f"{js}: the sidecar has no valid sha256 of the weights; the checkpoint cannot be verified")
    if not isinstance(side.get("meta", {}), dict):
        raise ValueError(f"{js}: the sidecar's 'meta' is not a mapping; the checkpoint is corrupted")
    return side


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (tensors on CPU, meta). Raises before parsing on a hash mismatch."""
    st, _ = _paths(path)
    side = read_meta(path)
    if not st.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {st}")
    data = st.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != side["sha256"]:
        raise ValueError(
            f"checkpoint {st} is corrupted or was modified: sha256 {digest[:12]}... does not match the "
            f"sidecar's {side['sha256'][:12]}...; nothing was loaded"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (header, sizes, dtypes)
        what = "a Python pickle or torch.save zip" if data[:1] == b"\x80" or data[:2] == b"PK" else "corrupted"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{st} is {what}, not a valid safetensors file ({first}); nothing was loaded (pickles are never read)"
        ) from None
    return tensors, side.get("meta", {})


def module_tensors(modules: dict[str, nn.Module], prefix: str = "model") -> dict[str, torch.Tensor]:
    """Flatten the state dicts of named modules into ``{prefix.name.key: tensor}``."""
    out: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            out[f"{prefix}.{name}.{k}"] = v
    return out


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 (hex) of a module's state dict: every entry's name, dtype, shape and bytes, in name order.

    Two modules with the same fingerprint compute the same function bit for bit; a model retrained by
    the same command on another CPU (whose kernels round otherwise) gets another one. A results store
    keeps it beside each source model's row, so cells measured on other weights are never mixed.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_module_tensors(
    modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor], *, prefix: str = "model", source: str = ""
) -> None:
    """Load ``tensors`` into ``modules``; every key and shape must match (checked before any copy)."""
    problems: list[str] = []
    staged: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
    for name, m in modules.items():
        want = m.state_dict()
        p = f"{prefix}.{name}."
        have = {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        shapes = [k for k in want if k in have and tuple(want[k].shape) != tuple(have[k].shape)]
        if missing:
            problems.append(f"{name}: missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if extra:
            problems.append(f"{name}: unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
        for k in shapes[:3]:
            problems.append(f"{name}.{k}: checkpoint {tuple(have[k].shape)} vs model {tuple(want[k].shape)}")
        staged.append((m, have))
    if problems:
        raise ValueError(
            f"checkpoint {source or ''} does not fit this architecture ({'; '.join(problems)}); "
            "was it saved from another architecture or stage?"
        )
    for m, have in staged:
        m.load_state_dict(have, strict=True)


def save_modules(path: str | os.PathLike, modules: dict[str, nn.Module], meta: dict[str, Any]) -> Path:
    """Save named modules' weights and buffers (e.g. ``{"encoder": g, "projector": pi}``)."""
    return save_checkpoint(path, module_tensors(modules), meta)


def load_modules(path: str | os.PathLike, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_modules` into ``modules``; returns meta."""
    tensors, meta = load_checkpoint(path)
    names = {k.split(".")[1] for k in tensors if k.startswith("model.")}
    wanted = set(modules)
    if not wanted <= names:
        raise ValueError(
            f"checkpoint {path} holds modules {sorted(names)}, not {sorted(wanted - names)}; "
            "was it saved by another stage?"
        )
    load_module_tensors(modules, tensors, source=str(path))
    return meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimiser's state as flat tensors ``optim.<param index>.<key>`` plus JSON param groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"optim.{idx}.{k}"] = t
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if not k.startswith("optim."):
            continue
        _, idx, key = k.split(".", 2)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": groups})

"""Data-parallel source-time training on ``torch.distributed`` (``torchrun``), and grid shards from its env.

How :func:`testtime.train.fit` trains with ``W`` processes (one per CPU socket share or GPU):

- **Process group**: the command calls :func:`init_from_env`: under ``torchrun`` (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK`` set) it initialises the default group, ``gloo`` on CPU and
  ``nccl`` on CUDA, with this process on ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``; the
  config keeps the plain device ``"cuda"``, so every rank's config, and the checkpoint metadata
  that resume compares, are the same).
- **Data**: the global batch is ``config.batch_size`` images in the same seeded order as one
  process; rank ``r`` takes the contiguous rows ``[r B/W, (r+1) B/W)`` of every global batch
  (:func:`local_rows`; ``B`` must be divisible by ``W``). The schedule, step count and resume
  state are functions of the global batch only, so a run may be resumed with another ``W``.
- **Augmentation**: the step generator is the same on every rank and each rank draws the
  per-image parameters for the whole global batch and keeps its rows
  (:func:`testtime.transforms.slicing.batch_slice`), so an image gets the same crop, flip,
  views and rotation as in the single-process run.
- **Gradients**: after the local backward one ``all_reduce`` averages, in a flat buffer per
  dtype, every trainable parameter's gradient, the BatchNorm running statistics of the trainable
  modules, a non-finite-loss flag and the logged values (:func:`average_step`). An explicit
  all-reduce rather than ``DistributedDataParallel`` wrapping, because an objective calls several
  modules, sometimes one module on several inputs and with some modules frozen: DDP needs every
  forward to go through its wrapper (and ``find_unused_parameters`` or ``static_graph`` for the
  rest), and its ``module.`` prefix would change the checkpoint keys. The cost is that
  communication does not overlap the backward pass (negligible for the models trained here).
  Each rank's loss is the mean over its ``B/W`` rows, so the mean of the ranks' gradients is the
  gradient of the global mean loss of a single-process step (exactly, up to float summation
  order, for losses that are a mean over images such as cross-entropy). A loss that couples the
  images of a batch (NT-Xent, Eq. 4) sees only the local batch as negatives, as in plain DDP.
- **BatchNorm**: each rank normalises with its local batch's statistics (``B/W`` images), as
  plain DDP does; the running mean and variance are averaged over ranks after every step (the
  running mean then equals the single-process one; DDP instead broadcasts rank 0's buffers). A
  model without BatchNorm (or with BN frozen in eval mode, or GroupNorm) follows the
  single-process run up to float summation order. ``torch.nn.SyncBatchNorm`` (global batch
  statistics) is CUDA-only and not offered here.
- **Non-finite loss**: when any rank's loss is not finite, every rank skips the step.
- **Files**: only rank 0 logs and writes checkpoints; the others wait at a barrier after every
  write (:func:`barrier`). Every rank reads the resume checkpoint, so multi-node runs need the run
  directory on a shared filesystem.
- **Initial weights**: rank 0's parameters and buffers are broadcast before the first step.

Bench grids: :func:`grid_shard` gives ``run_grid``'s ``shard=(i, n)`` from an explicit ``"i/n"`` or,
under ``torchrun``, from ``RANK``/``WORLD_SIZE`` (cells split with no overlap, no process group needed).

Example (2 processes on one CPU machine)::

    torchrun --standalone --nproc_per_node 2 -m testtime.cli train supervised --preset fmnist-cpu
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or ``None`` outside torchrun."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
    except ValueError:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK: expected integers, got {[env.get(k) for k in _ENV]}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK/WORLD_SIZE: need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def init_from_env(device: str) -> str:
    """Under torchrun, initialise the default process group; return the device this process trains on.

    ``gloo`` for a CPU ``device``, ``nccl`` for ``cuda`` (this process on ``cuda:LOCAL_RANK``, returned as
    ``"cuda"``). Outside torchrun, or when a group is already initialised, ``device`` is returned as is.
    """
    env = torchrun_env()
    if env is None or dist.is_initialized():
        return device
    if not dist.is_available():
        raise ValueError("torchrun environment found but this torch build has no torch.distributed")
    rank, world, local = env
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: LOCAL_RANK {local} has no CUDA device on this machine")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", local))
        return "cuda"
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return device


def shutdown() -> None:
    """Destroy the default process group, if any (end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the default group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when no group is initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()


def local_rows(batch_size: int) -> tuple[int, int]:
    """This rank's rows ``[lo, hi)`` of a global batch of ``batch_size``; ValueError if not divisible."""
    w, r = world_size(), rank()
    if batch_size % w:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes ({w})")
    per = batch_size // w
    if per < 1:
        raise ValueError(f"batch_size {batch_size} gives no images to each of {w} processes")
    return r * per, (r + 1) * per


def _flat_reduce(tensors: Sequence[torch.Tensor], op: str) -> None:
    """In place, for every tensor: the mean over ranks (``op="mean"``) or rank 0's value (``"broadcast"``).

    One collective per dtype on a flat buffer.
    """
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for ts in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in ts])
        if op == "mean":
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world_size())
        else:
            dist.broadcast(flat, src=0)
        k = 0
        for t in ts:
            t.detach().copy_(flat[k : k + t.numel()].view_as(t))
            k += t.numel()


def broadcast_modules(modules: Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers into every rank's modules (the same initial weights)."""
    if world_size() < 2:
        return
    seen: set[int] = set()
    tensors = []
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
    _flat_reduce(tensors, "broadcast")


def running_stats(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    """The running means and variances of the BatchNorm layers of ``modules`` in train mode (call after
    ``set_modes``): the buffers a training step updates."""
    out: list[torch.Tensor] = []
    seen: set[int] = set()
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats and sub.training:
                for t in (sub.running_mean, sub.running_var):
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        out.append(t)
    return out


def average_step(
    loss: torch.Tensor, logs: Mapping[str, float], params: Sequence[nn.Parameter], stats: Sequence[torch.Tensor]
) -> tuple[bool, dict[str, float]]:
    """Backward (when this rank's loss is finite), then average gradients, ``stats`` and ``logs`` over ranks.

    Returns (whether every rank's loss was finite, so the optimiser may step; the mean ``logs``).
    A parameter without a gradient here contributes zeros and keeps ``grad=None`` (as one process would).
    """
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
    had = [p.grad is not None for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    keys = list(logs)  # the same order on every rank (the same objective code)
    extra = torch.tensor([0.0 if finite else 1.0] + [float(logs[k]) for k in keys], dtype=torch.float64)
    extra = extra.to(loss.device)
    _flat_reduce([*grads, *stats, extra], "mean")
    for p, h in zip(params, had):
        if not h:
            p.grad = None
    vals = extra.cpu().tolist()
    return vals[0] == 0.0, dict(zip(keys, vals[1:]))


def grid_shard(shard: str | tuple[int, int] | None = None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """A bench grid's shard (i, n): ``shard`` when given (``"i/n"`` or a pair), else ``(RANK, WORLD_SIZE)``
    under torchrun, else ``(0, 1)`` (the whole grid)."""
    from testtime.store.runner import check_shard, parse_shard

    if shard is not None:
        if isinstance(shard, str):
            return parse_shard(shard)
        pair = (int(shard[0]), int(shard[1]))
        check_shard(pair)
        return pair
    tr = torchrun_env(env)
    return (tr[0], tr[1]) if tr is not None else (0, 1)

"""Data-parallel training under torchrun (2 CPU processes, gloo) against single-process runs.

The 2-process runs are launched once per module (``ddp_worker.py``): a conv net without BN must
follow the single-process loss curve and weights up to float summation order (the augmentation
draws are the single-process ones); a BN net must equal, to float order, one process that applies
the encoder to each half of every batch separately (each rank's BN sees its local half) and
averages the two halves' running-statistics updates; its loss curve stays within 0.1 of the plain
single-process BN run (the stated loose tolerance: local BN statistics of 8 instead of 16 images).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from testtime.losses import cross_entropy
from testtime.train import SupervisedObjective, fit
from testtime.train import distributed as D
from testtime.transforms import SimCLRViewsConfig, crop_flip, simclr_views
from testtime.transforms.rotation import rotate_random
from testtime.transforms.slicing import batch_slice, draw_rows

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker as W  # noqa: E402


def _launch(out: Path, *scenarios: str) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    src = str(Path(D.__file__).parents[2])
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(out), *scenarios]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _forked_rank(local: int, out: Path, port: int, scenarios: list[str]) -> None:
    os.environ.update(RANK=str(local), LOCAL_RANK=str(local), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    W.main(out, scenarios)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The single-process reference, then 2 ranks forked from this process (set up as torchrun would)
    after it, so that they inherit its imports and warm-up (fast). Where CUDA is present, autograd has
    device threads that a fork cannot carry (torch refuses the backward in the child), so the ranks are
    launched by torchrun instead (slower, the same runs)."""
    ref = W.objective(bn=False)
    res = fit(ref, W.split(), W.CFG, None, "sup", log=None)
    out = tmp_path_factory.mktemp("ddp_plain")
    if torch.cuda.is_available():
        return _launch(out, "plain"), ref, res
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_forked_rank, (out, port, ["plain"]), nprocs=2, start_method="fork")
    return out, ref, res


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("ddp_slow"), "bn", "resume")


def _history(run: Path) -> tuple[list[float], dict]:
    meta = json.loads((run / "sup.json").read_text())["meta"]
    return [h["ce"] for h in meta["history"]], meta


def _rank_weights(out: Path, sc: str) -> dict[str, torch.Tensor]:
    w0, w1 = (load_file(str(out / f"{sc}.rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "the ranks' weights differ"
    return w0


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k


def test_two_processes_follow_the_single_process_run(plain_run):
    plain_run, ref, res = plain_run
    ddp, meta = _history(plain_run / "plain")
    assert meta["data_parallel"] == {"world_size": 2, "backend": "gloo"}
    assert len(ddp) == len(res.history) == 8
    assert ddp == pytest.approx([h["ce"] for h in res.history], abs=1e-5)
    assert ddp[-1] < ddp[0]  # it trains
    _assert_close(_rank_weights(plain_run, "plain"), W.tensors(ref), atol=1e-6)
    assert sorted(p.name for p in (plain_run / "plain").iterdir()) == ["sup.json", "sup.safetensors"]
    assert json.loads((plain_run / "checks.json").read_text()) == {"indivisible_batch": "ValueError"}


class _GhostBN(SupervisedObjective):
    """One process doing what 2 ranks do: BN statistics of each half, running statistics averaged."""

    def loss(self, x, y, g):
        x = crop_flip(x, g, self.augment)
        enc = self.modules["encoder"]
        bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
        start = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
        feats, ends = [], []
        for half in x.chunk(2):
            for m, (mu, var) in zip(bns, start):
                m.running_mean.data.copy_(mu)  # .data: the forward saved these tensors for backward
                m.running_var.data.copy_(var)
            feats.append(enc(half))
            ends.append([(m.running_mean.clone(), m.running_var.clone()) for m in bns])
        for i, m in enumerate(bns):
            m.running_mean.data.copy_((ends[0][i][0] + ends[1][i][0]) / 2)
            m.running_var.data.copy_((ends[0][i][1] + ends[1][i][1]) / 2)
            m.num_batches_tracked -= 1  # one step, as on each rank
        loss = cross_entropy(self.modules["head"](torch.cat(feats)), y)
        return loss, {"ce": float(loss.detach())}


@pytest.mark.slow
def test_batchnorm_uses_local_batch_statistics(slow_runs):
    ddp, _ = _history(slow_runs / "bn")
    ghost = W.objective(bn=True, cls=_GhostBN)
    res = fit(ghost, W.split(), W.CFG, None, "sup", log=None)
    assert ddp == pytest.approx([h["ce"] for h in res.history], abs=1e-5)
    _assert_close(_rank_weights(slow_runs, "bn"), W.tensors(ghost), atol=1e-5)
    plain = fit(W.objective(bn=True), W.split(), W.CFG, None, "sup", log=None)  # global-batch BN
    assert ddp == pytest.approx([h["ce"] for h in plain.history], abs=0.1)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_weights(plain_run, slow_runs):
    ddp, meta = _history(slow_runs / "resume")
    assert len(ddp) == 4  # resumed from the epoch-end checkpoint at step 4
    a, b = _rank_weights(plain_run[0], "plain"), _rank_weights(slow_runs, "resume")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_slice_gives_each_row_its_single_process_draws():
    x = torch.rand(8, 3, 8, 8)
    full_g, part_g = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    cfg = SimCLRViewsConfig()
    full = [crop_flip(x, full_g), *simclr_views(x, full_g, cfg), rotate_random(x, full_g)[1]]
    with batch_slice(2, 6, 8):
        part = [crop_flip(x[2:6], part_g), *simclr_views(x[2:6], part_g, cfg), rotate_random(x[2:6], part_g)[1]]
    for f, p in zip(full, part):
        assert torch.equal(f[2:6], p)
    assert torch.equal(torch.rand(3, generator=full_g), torch.rand(3, generator=part_g))  # same state after
    assert draw_rows(4) == (4, slice(None))  # outside the context: unchanged
    with batch_slice(0, 4, 8):
        assert draw_rows(6) == (6, slice(None))  # another batch size: drawn as it is
    with pytest.raises(ValueError, match="batch_slice"):
        with batch_slice(4, 2, 8):
            pass


def test_single_process_helpers(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.init_from_env("cpu") == "cpu" and not torch.distributed.is_initialized()
    assert (D.world_size(), D.rank(), D.is_main()) == (1, 0, True)
    assert D.local_rows(16) == (0, 16)


def test_grid_shard_from_explicit_value_or_torchrun_env():
    assert D.grid_shard("1/4", env={}) == (1, 4)
    assert D.grid_shard((2, 3), env={"RANK": "0", "WORLD_SIZE": "2"}) == (2, 3)  # explicit wins
    assert D.grid_shard(None, env={"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4)
    assert D.grid_shard(None, env={}) == (0, 1)
    assert D.torchrun_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2, 1)
    for bad in ("4/4", "x"):
        with pytest.raises(ValueError, match="shard"):
            D.grid_shard(bad, env={})
    with pytest.raises(ValueError, match="RANK"):
        D.grid_shard(None, env={"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integers"):
        D.torchrun_env({"RANK": "a", "WORLD_SIZE": "2"})

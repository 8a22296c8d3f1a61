"""CTA's evaluation: clean accuracy, corrupted test domains, the iteration curve, the pipeline's rows.

:func:`evaluate_pipeline` chooses the test-time learning rate and iteration count on the held-out
corruptions with the accuracy-against-iterations curve (the CTA paper's Fig. 3), then evaluates
every row of ``eval.rows`` on the test corruptions (``testtime cta``). The grid of ``testtime bench
CONFIG.yaml`` (:mod:`testtime.bench.cells`) builds the same models from the stage checkpoints and
evaluates them cell by cell instead.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from testtime.bench.cost import evaluate_with_cost
from testtime.bench.protocols import Domain, get_protocol
from testtime.bench.runner import Heartbeat, to_float_batch
from testtime.config import config_to_dict
from testtime.data import ImageSplit
from testtime.data.names import CORRUPTIONS_15, CORRUPTIONS_EXTRA
from testtime.train.checkpoint import _atomic_write, environment

if TYPE_CHECKING:
    from testtime.config import PipelineConfig
    from testtime.data.experiment import PipelineData
    from testtime.models.heads import ProjectedClassifier
    from testtime.train.pipeline import Models

Logger = Callable[[str], None]


def eval_seed(cfg: PipelineConfig) -> int:
    """The seed of the test subset and corruption draws: ``data.eval_seed``, or ``seed`` when unset."""
    return cfg.seed if cfg.data.eval_seed is None else cfg.data.eval_seed


def corruption_seed(name: str, base: int) -> int:
    """The seed of corruption ``name``'s draws: ``base`` + its position among the 15 benchmark corruptions
    (or among the 4 held-out ones), so a corruption gets the same draw in any list it appears in (and
    the same as :func:`corrupted_domains` gives the default lists)."""
    for group in (CORRUPTIONS_15, CORRUPTIONS_EXTRA):
        if name in group:
            return base + group.index(name)
    return base


@torch.no_grad()
def clean_accuracy(
    model: nn.Module,
    split: ImageSplit,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    test_batch_bn: bool = False,
    seed: int = 0,
) -> float:
    """Accuracy (%) of ``model`` on ``split`` in eval mode (or with test-batch BN statistics)."""
    from testtime.methods.base import use_batch_statistics

    model = copy.deepcopy(model).to(device).eval()
    if test_batch_bn:
        use_batch_statistics(model)
    # a seeded shuffle: with test-batch BN statistics, batches must not be sorted by class
    order = np.random.default_rng(seed).permutation(len(split))
    correct = 0
    for s in range(0, len(split), batch_size):
        idx = order[s : s + batch_size]
        x = to_float_batch(split.images[idx], device)
        correct += int((model(x).argmax(1).cpu().numpy() == split.labels[idx]).sum())
    return 100.0 * correct / max(1, len(split))


def clean_accuracies(named: Iterable[tuple[str, nn.Module]], split: ImageSplit, *, device: str = "cpu",
                     seed: int = 0) -> Iterator[tuple[str, float, float, float]]:
    """For each (label, model), as it is measured: (label, eval-mode accuracy %, test-batch-BN accuracy %,
    wall seconds of both) on ``split`` with :func:`clean_accuracy` (the same seeded shuffle for both)."""
    for label, model in named:
        t0 = time.perf_counter()
        acc = clean_accuracy(model, split, device=device, seed=seed)
        bn = clean_accuracy(model, split, device=device, seed=seed, test_batch_bn=True)
        yield label, acc, bn, time.perf_counter() - t0


def corrupted_domains(
    split: ImageSplit,
    names: Sequence[str],
    severity: int,
    seed: int,
    params: str | None = None,
    log: Logger | None = print,
) -> list:
    """One :class:`testtime.bench.Domain` per corruption of ``split`` at ``severity``, seeded with
    :func:`corruption_seed` (``seed`` + the corruption's position in its group)."""
    from testtime.corruptions import corrupt

    out = []
    for name in names:
        t0 = time.perf_counter()
        imgs = corrupt(split.images, name, severity, seed=corruption_seed(name, seed), params=params)
        out.append(Domain(name, np.asarray(imgs, dtype=np.uint8), split.labels))
        if log:
            log(f"[corrupt] {name} s{severity}: {len(imgs)} images in {time.perf_counter() - t0:.1f}s")
    return out


def iteration_curve(
    bundle: ProjectedClassifier,
    method: str,
    domains: Sequence,
    *,
    lr: float,
    max_steps: int,
    batch_size: int = 128,
    tau: float = 0.01,
    bn: str = "batch",
    seed: int = 0,
    device: str = "cpu",
    log: Logger | None = None,
) -> dict[str, list[float]]:
    """Accuracy (%) per domain after 0..max_steps iterations per batch (episodic; the paper's Fig. 3).

    Iteration 0 is the bundle with test-batch BN statistics (``bn="batch"``) and no gradient step.
    """
    from testtime.methods import create_method

    m = create_method(method, copy.deepcopy(bundle), steps=1, lr=lr, tau=tau, bn=bn, seed=seed).to(device)
    proto = get_protocol("episodic", batch_size=batch_size, seed=seed)
    correct = {d.name: np.zeros(max_steps + 1) for d in domains}
    total = {d.name: 0 for d in domains}
    heart = Heartbeat(log)
    n_batches = sum(-(-len(d.labels) // batch_size) for d in domains)
    for i, batch in enumerate(proto.stream(domains)):
        if (t := heart.due()) is not None and heart.log is not None:
            heart.log(f"[heldout] lr {lr:g}: batch {i}/{n_batches} ({t:.0f}s)")
        m.reset()
        x = to_float_batch(batch.images, device)
        for k in range(max_steps + 1):
            if k > 0:
                m.adapt(x)
            pred = m.predict(x).argmax(1).cpu().numpy()
            correct[batch.domain][k] += int((pred == batch.labels).sum())
        total[batch.domain] += len(batch.labels)
    return {n: list(100.0 * correct[n] / max(1, total[n])) for n in correct}


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def evaluate_pipeline(
    cfg: PipelineConfig, models: Models, data: PipelineData, run_dir: str | Path, *, log: Logger | None = print
) -> dict[str, Any]:
    """Choose lr / steps on the held-out corruptions, then evaluate every row on the test corruptions.

    Writes ``<run_dir>/results.json`` (rows, curves, the resolved config, versions, wall times).
    """
    from testtime.methods import create_method

    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    dev = cfg.device
    out: dict[str, Any] = {
        "config": config_to_dict(cfg),
        "environment": environment(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    out["clean"] = {}
    for label, mdl in models.named():
        out["clean"][label] = clean_accuracy(mdl, data.test, device=dev)
        if log:
            log(f"[clean] {label}: {out['clean'][label]:.2f}% on {len(data.test)} test images")
    _write_json(run_dir / "results.json", out)
    ttt = cfg.ttt
    lr, steps = ttt.lr, ttt.steps
    if ttt.select_on_heldout and cfg.eval.heldout and models.aligned is not None:
        held = corrupted_domains(
            data.heldout, cfg.eval.heldout, cfg.eval.severity, seed=cfg.seed + 1000, params=cfg.eval.params, log=log
        )
        curves = {}
        best = (-1.0, lr, steps)
        for cand in ttt.lr_candidates:
            t0 = time.perf_counter()
            cur = iteration_curve(
                models.aligned,
                "cta",
                held,
                lr=cand,
                max_steps=ttt.max_steps,
                batch_size=ttt.batch_size,
                tau=ttt.tau,
                bn=ttt.bn,
                seed=ttt.seed,
                device=dev,
                log=log,
            )
            mean = np.mean([cur[n] for n in cur], axis=0)  # (max_steps + 1,)
            curves[str(cand)] = {"per_domain": cur, "mean": list(mean), "wall_s": time.perf_counter() - t0}
            k = int(np.argmax(mean[1:])) + 1  # at least one step: the method is test-time *training*
            if mean[k] > best[0] + 1e-9:
                best = (float(mean[k]), cand, k)
            if log:
                log(
                    f"[heldout] lr {cand:g}: "
                    + " ".join(f"{v:.1f}" for v in mean)
                    + f" ({time.perf_counter() - t0:.0f}s)"
                )
        lr, steps = best[1], best[2]
        out["heldout"] = {
            "corruptions": list(cfg.eval.heldout),
            "curves": curves,
            "chosen_lr": lr,
            "chosen_steps": steps,
            "chosen_mean_accuracy": best[0],
        }
        if log:
            log(f"[heldout] chosen lr {lr:g}, steps {steps} (mean held-out accuracy {best[0]:.2f}%)")
        _write_json(run_dir / "results.json", out)
    domains = corrupted_domains(
        data.test, cfg.eval.corruptions, cfg.eval.severity, seed=eval_seed(cfg), params=cfg.eval.params, log=log
    )
    proto = get_protocol(ttt.protocol, batch_size=ttt.batch_size, seed=ttt.seed)
    plan: dict[str, tuple[str, nn.Module | None, dict[str, Any]]] = {
        "supervised": ("source", models.supervised, {}),
        "supervised+bn": ("bn", models.supervised, {}),
        "aligned": ("source", models.aligned, {}),
        "aligned+bn": ("bn", models.aligned, {}),
        "cta": ("cta", models.aligned, {"steps": steps, "lr": lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed}),
        "cta-paper-settings": (
            "cta",
            models.aligned,
            {"steps": ttt.steps, "lr": ttt.lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed},
        ),
        "ssl+probe": ("source", models.probe, {}),
        "ssl+probe+bn": ("bn", models.probe, {}),
        "cta-c": ("cta-c", models.probe, {"steps": steps, "lr": lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed}),
        "y-model-eval": ("source", models.joint, {}),
        "y-model+bn": ("bn", models.joint, {}),
        "y-model": (
            "y-model",
            models.joint,
            {"steps": steps, "lr": lr, "tau": ttt.tau, "bn": ttt.bn, "seed": ttt.seed},
        ),
    }
    out["rows"] = {}
    out["protocol"] = proto.describe("after")
    for row in cfg.eval.rows:
        name, mdl, over = plan[row]
        if mdl is None:
            continue
        method = create_method(name, copy.deepcopy(mdl), **over)
        if log:
            log(f"[eval] {row}: {name} on {len(domains)} corruption(s) x {len(data.test)} images ...")
        res, cost = evaluate_with_cost(method, domains, proto, device=dev, channels=data.test.channels, log=log)
        out["rows"][row] = {"method": name, "settings": over, **res.to_dict(), "cost": cost}
        if log:
            log(
                f"[eval] {row}: mean {res.mean_accuracy:.2f}% ({res.wall_s:.0f}s, non-finite steps "
                f"{res.nonfinite_steps})"
            )
        _write_json(run_dir / "results.json", out)
    out["wall_s_eval"] = time.perf_counter() - t_start
    _write_json(run_dir / "results.json", out)
    return out


def results_table(results: dict[str, Any]) -> str:
    """A markdown table (rows x corruptions + mean) from ``results.json``'s content."""
    rows = results.get("rows", {})
    if not rows:
        return "(no rows)"
    names = list(next(iter(rows.values()))["accuracy"].keys())
    short = {
        n: n.replace("_noise", "").replace("_blur", "").replace("_transform", "").replace("_compression", "")
        for n in names
    }
    head = "| row | " + " | ".join(short[n] for n in names) + " | mean |"
    sep = "|---|" + "---:|" * (len(names) + 1)
    lines = [head, sep]
    for r, v in rows.items():
        acc = v["accuracy"]
        lines.append(f"| {r} | " + " | ".join(f"{acc[n]:.1f}" for n in names) + f" | **{v['mean_accuracy']:.2f}** |")
    return "\n".join(lines)


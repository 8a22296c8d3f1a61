"""A dry run of the ``paper`` preset's whole code path, shrunk with ``--set``: on CPU, and on CUDA where a GPU is.

What runs is ``testtime cta --preset paper`` itself: the official CIFAR-10 binary layout (a tiny
release written by the test), every source-time stage, the saved test-time bundle, the corruption
of the test subset, and every evaluation row under the episodic protocol. Only sizes change (data,
epochs, batch sizes, iterations, 3 of the 15 corruptions, a ResNet-8 for the ResNet-50) and, in
the CPU run, the device (cuda -> cpu); every other setting is the preset's, and the test checks they reached the run.
A ResNet-50 CTA bundle (the preset's backbone) takes one test-time step separately.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from testtime.commands.train import load_config

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10_binary(root, per_class_train: int = 2, per_class_test: int = 3) -> None:
    """``root/cifar-10-batches-bin`` in the official layout: rows of 1 label byte + 3072 bytes
    (R, G, B planes of 32x32), balanced labels, a class-dependent colour plus noise."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def rows(per_class: int) -> bytes:
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        colour = (labels[:, None, None, None] * 25).astype(np.int64)  # (n, 1, 1, 1)
        planes = np.clip(colour + rng.integers(0, 40, (len(labels), 3, 32, 32)), 0, 255).astype(np.uint8)
        return np.concatenate([labels[:, None], planes.reshape(len(labels), 3072)], axis=1).tobytes()

    for k in range(1, 6):
        (folder / f"data_batch_{k}.bin").write_bytes(rows(per_class_train))
    (folder / "test_batch.bin").write_bytes(rows(per_class_test))
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")


SHRINK = [
    "model.arch=resnet8",
    "data.test_per_class=1",
    "ttt.steps=2",
    "ttt.batch_size=10",
    "eval.corruptions=[gaussian_noise, defocus_blur, jpeg_compression]",
] + [f"{stage}.{key}" for stage in ("supervised", "ssl.train", "align.train", "probe.train", "joint.train")
     for key in ("epochs=1", "batch_size=50", "warmup_epochs=0", "log_every=1000")]


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_paper_preset_runs_end_to_end_at_tiny_scale(tmp_path, capsys, device):
    """On ``cpu`` here; on ``cuda`` (the preset's own device) where a GPU is present."""
    from testtime.cli import main

    write_cifar10_binary(tmp_path / "data", per_class_train=1)  # 50 training images: one batch per stage
    run = tmp_path / "run"
    args = ["cta", "--preset", "paper", "--run-dir", str(run), "--quiet", "--set", f"data.root={tmp_path / 'data'}"]
    for s in [*SHRINK, f"device={device}"]:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| row |" in out and "total wall time" in out
    # every stage wrote its checkpoint; the test-time bundle holds g, pi and h, not the supervised f
    for stage in ("supervised", "ssl", "align", "probe", "joint", "cta"):
        assert (run / f"{stage}.safetensors").is_file()
    from testtime.api import load_bundle

    bundle = load_bundle(run / "cta")
    assert {n.split(".")[0] for n, _ in bundle.named_parameters()} == {"encoder", "projector", "head"}
    # the preset's own settings reached the run, only the sizes and the device changed
    paper = load_config("paper", None, [])
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["name"] == "paper" and cfg["data"]["dataset"] == "cifar10" and cfg["device"] == device
    assert cfg["ttt"]["lr"] == paper.ttt.lr == 1e-6 and cfg["ttt"]["protocol"] == "episodic"
    assert cfg["ssl"]["tau"] == 0.01 and cfg["align"]["weights"]["tau"] == 0.5
    assert cfg["supervised"]["lr"] == paper.supervised.lr and cfg["supervised"]["final_lr"] == paper.supervised.final_lr
    assert cfg["ttt"]["select_on_heldout"] is False  # the paper's fixed lr and iterations
    # every evaluation row of the preset, on each corruption of the 10-image seeded subset
    res = json.loads((run / "results.json").read_text())
    assert set(res["rows"]) == set(paper.eval.rows) and len(paper.eval.corruptions) == 15
    for row in res["rows"].values():
        assert len(row["accuracy"]) == 3 and all(0.0 <= a <= 100.0 for a in row["accuracy"].values())
    assert res["rows"]["cta"]["settings"]["steps"] == 2 and res["rows"]["cta"]["settings"]["lr"] == 1e-6


def test_paper_backbone_takes_a_cta_step_on_cpu():
    """The preset's ResNet-50 (CIFAR stem) as a CTA bundle: one test-time step on 4 images (16 px: half the time)."""
    from testtime.methods import create_method
    from testtime.models import create_model
    from testtime.models.heads import ProjectedClassifier, projector

    torch.manual_seed(0)
    m = create_model("resnet50", 10)
    bundle = ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)
    assert m.feature_dim == 2048
    method = create_method("cta", bundle, steps=1, lr=1e-6)
    before = m.encoder.conv1.weight.detach().clone()
    logits = method(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all() and method.last_steps == 1
    assert not torch.equal(before, m.encoder.conv1.weight)  # g was updated

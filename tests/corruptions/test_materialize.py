import io
import json

import numpy as np
import pytest

from testtime.corruptions import CorruptedSplit
from testtime.corruptions import materialize as mat_module
from testtime.corruptions.materialize import materialize
from testtime.data.split import ImageSplit


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    return ImageSplit(images, rng.integers(0, 10, 12).astype(np.int64), tuple("abcdefghij"), "toy/test")


def test_published_layout_readable_by_the_loader(split, tmp_path):
    paths = materialize(split, tmp_path, corruptions=["fog", "contrast"], seed=0, chunk_size=5, progress=False)
    assert [p.name for p in paths] == ["fog.npy", "contrast.npy"]
    fog = np.load(tmp_path / "fog.npy")
    labels = np.load(tmp_path / "labels.npy")
    assert fog.shape == (60, 32, 32, 3) and fog.dtype == np.uint8
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.tile(split.labels, 5))
    for s in range(1, 6):  # blocks of N in severity order, equal to the on-the-fly split
        expect = CorruptedSplit(split, "fog", s, seed=0, chunk_size=5).materialize().images
        assert np.array_equal(fog[(s - 1) * 12 : s * 12], expect)
    meta = json.loads((tmp_path / "corruptions.json").read_text())
    assert meta["params"] == "cifar" and meta["severities"] == [1, 2, 3, 4, 5] and meta["seed"] == 0
    assert not (tmp_path / ".partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "contrast.npy", "corruptions.json", "fog.npy", "labels.npy"
    ]  # .lock: one run at a time (released by the OS when its holder exits)
    from testtime.data import load_dataset

    loaded = load_dataset("cifar10-c", "test", root=tmp_path, corruption="fog", severity=3)
    assert np.array_equal(loaded.images, fog[24:36]) and np.array_equal(loaded.labels, split.labels)


def test_interrupted_run_resumes_and_matches(split, tmp_path, monkeypatch):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    materialize(split, ref_dir, corruptions=["gaussian_noise", "snow"], seed=4, chunk_size=5, progress=False)

    calls = {"n": 0}
    real = mat_module._write_block

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 7:  # die in the middle of snow (after gaussian_noise's 5 blocks and one of snow)
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(mat_module, "_write_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        materialize(split, run_dir, corruptions=["gaussian_noise", "snow"], seed=4, chunk_size=5, progress=False)
    assert (run_dir / "gaussian_noise.npy").is_file() and not (run_dir / "snow.npy").exists()
    assert [p.name for p in (run_dir / ".partial").iterdir()] == ["snow-1.npy"]
    assert not list(run_dir.glob(".*.tmp-*"))  # nothing half-written

    (run_dir / ".partial" / ".snow-2.npy.tmp-99999").write_bytes(b"half a file from a killed worker")
    monkeypatch.setattr(mat_module, "_write_block", real)
    done = []
    monkeypatch.setattr(mat_module, "_write_block", lambda *a, **k: done.append(a[1:3]) or real(*a, **k))
    materialize(split, run_dir, corruptions=["gaussian_noise", "snow"], seed=4, chunk_size=5, progress=False)
    assert done == [("snow", 2), ("snow", 3), ("snow", 4), ("snow", 5)]  # only what was missing
    for name in ("gaussian_noise", "snow"):
        assert np.array_equal(np.load(run_dir / f"{name}.npy"), np.load(ref_dir / f"{name}.npy"))
    assert not (run_dir / ".partial").exists()


def test_other_settings_refused_before_writing(split, tmp_path):
    materialize(split, tmp_path, corruptions=["contrast"], severities=[5], seed=0, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"out: .* different settings \(seed\)"):
        materialize(split, tmp_path, corruptions=["contrast"], severities=[5], seed=1, progress=False)
    with pytest.raises(KeyError, match="name: unknown corruption 'blur'"):
        materialize(split, tmp_path, corruptions=["contrast", "blur"], severities=[5], seed=0, progress=False)
    with pytest.raises(ValueError, match="severity"):
        materialize(split, tmp_path, corruptions=["contrast"], severities=[6], seed=0, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert np.load(tmp_path / "contrast.npy").shape == (12, 32, 32, 3)  # one severity block


@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(split, tmp_path):
    materialize(split, tmp_path / "a", corruptions=["motion_blur", "frost"], seed=2, chunk_size=5, progress=False)
    materialize(
        split, tmp_path / "b", corruptions=["motion_blur", "frost"], seed=2, chunk_size=5, progress=False, workers=2
    )
    for name in ("motion_blur", "frost"):
        assert np.array_equal(np.load(tmp_path / "a" / f"{name}.npy"), np.load(tmp_path / "b" / f"{name}.npy"))


def test_frost_too_large_refused_before_writing(tmp_path):
    big = ImageSplit(np.zeros((2, 100, 100, 3), np.uint8), np.zeros(2, np.int64), ("a",), "big")
    with pytest.raises(ValueError, match="images: 100x100 is too large for frost with parameter set 'cifar'"):
        materialize(big, tmp_path / "o", corruptions=["fog", "frost"], params="cifar", progress=False)
    assert not (tmp_path / "o").exists()


def test_folders_layout_readable_by_the_tiny_imagenet_c_loader(split, tmp_path):
    from PIL import Image

    from testtime.data import load_dataset

    out = tmp_path / "tic"
    split = ImageSplit(split.images, np.arange(12) % 10, split.classes, split.name)  # every class present
    paths = materialize(split, out, corruptions=["fog"], severities=[2, 5], seed=0, layout="folders", progress=False)
    assert paths == [out / "fog"] and sorted(p.name for p in (out / "fog").iterdir()) == ["2", "5"]
    loaded = load_dataset("tiny-imagenet-c", root=out, corruption="fog", severity=5, cache=False)
    expect = CorruptedSplit(split, "fog", 5, seed=0).materialize()
    # the class folders hold the images in split order; each went through one JPEG (quality 85) save
    order = np.argsort(split.labels, kind="stable")
    assert np.array_equal(loaded.labels, split.labels[order])

    def jpeg85(img):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    assert np.array_equal(loaded.images, np.stack([jpeg85(im) for im in expect.images[order]]))
    with Image.open(out / "fog" / "5" / split.classes[split.labels[0]] / "00000.JPEG") as im:
        assert im.format == "JPEG" and im.size == (32, 32)
    before = (out / "fog" / "5").stat().st_mtime_ns
    materialize(split, out, corruptions=["fog"], severities=[2, 5], seed=0, layout="folders", progress=False)
    assert (out / "fog" / "5").stat().st_mtime_ns == before  # done folders are kept


def test_folders_layout_needs_folder_safe_class_names(tmp_path):
    bad = ImageSplit(np.zeros((2, 32, 32, 1), np.uint8), np.zeros(2, np.int64), ("T-shirt/top",), "fm")
    with pytest.raises(ValueError, match="layout: 'folders' needs class names usable as folder names"):
        materialize(bad, tmp_path / "o", corruptions=["fog"], layout="folders", progress=False)
    assert not (tmp_path / "o").exists()

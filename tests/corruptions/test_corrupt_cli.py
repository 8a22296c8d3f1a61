import numpy as np
import pytest
from PIL import Image

from testtime.cli import main
from testtime.corruptions import CorruptedSplit, list_corruptions


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny image-folder tree (test/<class>/*.png), 10 classes x 1 image, 32 x 32."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(10):
        d = root / "test" / f"class{c}"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "0.png")
    return root


def test_list(capsys):
    assert main(["corrupt", "--list"]) == 0
    out = capsys.readouterr().out
    assert "benchmark: gaussian_noise" in out and "extra: speckle_noise gaussian_blur spatter saturate" in out


def test_writes_published_layout(folder, tmp_path, capsys):
    out = tmp_path / "c"
    args = ["corrupt", "--dataset", "imagefolder", "--root", str(folder), "--out", str(out)]
    assert main([*args, "--corruptions", "contrast,fog", "--quiet", "--workers", "0", "--chunk-size", "4"]) == 0
    fog = np.load(out / "fog.npy")
    assert fog.shape == (50, 32, 32, 3) and np.load(out / "labels.npy").shape == (50,)
    from testtime.data import load_dataset

    clean = load_dataset("imagefolder", "test", root=folder)
    expect = CorruptedSplit(clean, "fog", 2, seed=0, chunk_size=4).materialize().images
    assert np.array_equal(fog[10:20], expect)
    assert "wrote 2 corruption files" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corruptions", "fog,rain"], "--corruptions: unknown corruption 'rain'; valid: all, benchmark, extra"),
        (["--severities", "0-5"], "--severities: values must lie in 1..5"),
        (["--severities", "five"], "--severities: cannot read 'five'"),
        (["--params", "mnist"], "--params: unknown parameter set 'mnist'; valid: cifar, tiny, imagenet"),
        (["--device", "gpu0"], "--device: not a torch device: 'gpu0'"),
        (["--layout", "zip"], "--layout: unknown layout 'zip'; valid: npy, folders"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    argv = ["corrupt", "--dataset", "imagefolder", "--root", str(folder), "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("testtime corrupt: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_grid_png(folder, tmp_path):
    png = tmp_path / "grid.png"
    argv = ["corrupt", "--dataset", "imagefolder", "--root", str(folder), "--grid", str(png), "--index", "3"]
    assert main(argv) == 0
    with Image.open(png) as im:
        w, h = im.size
    rows = len(list_corruptions())
    assert w > 6 * 96 and h > rows * 96  # 19 rows of 96 px cells, clean + 5 columns
    assert main(["corrupt", "--dataset", "imagefolder", "--root", str(folder), "--grid", str(tmp_path / "x.jpg")]) == 2

"""``testtime data list|download|info`` through the CLI entry point."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from testtime.cli import main
from testtime.data.download import RELEASES, Resource


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTTIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TESTTIME_DATA", str(tmp_path / "home"))


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_list_shows_every_dataset_and_where_it_looked(tmp_path, capsys):
    folder = tmp_path / "home" / "fashion-mnist"
    folder.mkdir(parents=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("cifar10", "cifar10-c", "cifar100", "cifar100-c", "fashion-mnist", "imagefolder",
                 "tiny-imagenet", "tiny-imagenet-c"):  # fmt: skip
        assert f"  {name} " in out
    assert f"fashion-mnist    found      {folder}" in out
    assert f"looked in {tmp_path / 'home' / 'cifar-10-batches-py'}" in out
    assert main(["data", "info", "fashion-mnist"]) == 0
    assert "fashion-mnist/test: 3 images 28x28x1 uint8, 10 classes" in capsys.readouterr().out


def test_list_with_root(tmp_path, capsys):
    assert main(["data", "list", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"looked in {tmp_path / 'r' / 'CIFAR-10-C'}" in out and "home" not in out


def test_download_offline_one_line(tmp_path, monkeypatch, capsys):
    res = RELEASES["cifar10"][0]
    offline = Resource("http://127.0.0.1:9/" + res.filename, res.filename, res.md5)
    monkeypatch.setitem(RELEASES, "cifar10", (offline,))
    assert main(["data", "download", "cifar10", "--root", str(tmp_path / "dl"), "--timeout", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("testtime data: error: cannot download http://127.0.0.1:9/")
    assert "pass --root FOLDER" in err and "$TESTTIME_DATA" in err and res.md5 in err


def test_bad_input_is_one_line(capsys):
    assert main(["data", "download", "mnist"]) == 2
    assert "unknown downloadable dataset 'mnist'; valid: cifar10, cifar10-c" in capsys.readouterr().err
    assert main(["data", "info", "cifar10-c", "--corruption", "rain"]) == 2
    assert "error: corruption: expected one of" in capsys.readouterr().err
    assert main(["data", "info", "nope"]) == 2
    assert "unknown dataset 'nope'; valid:" in capsys.readouterr().err
    assert main(["data", "info", "cifar10"]) == 2
    assert "dataset cifar10 not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["data", "--help"], ["data", "list", "--help"], ["data", "download", "--help"]])
def test_help(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0 and "usage: testtime data" in capsys.readouterr().out

"""Bad config values fail in one line before any work (issue 9: names, ranges, whole-config checks)."""

from __future__ import annotations

import pytest

from testtime.cli import main
from testtime.commands.train import load_config
from testtime.data.datasets import find_dataset


@pytest.mark.parametrize("name", ["../../esc", "/an/absolute/dir", "a/b", "..", ".", "", "x\\y"])
def test_name_must_be_a_plain_name(name):
    with pytest.raises(ValueError, match="name must be a plain name"):
        load_config("demo", None, [f"name={name!r}"] if name else ["name=''"])


def test_cli_refuses_an_escaping_name_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "supervised", "--preset", "demo", "--set", "name=../../esc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name must be a plain name" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_config_file_with_an_absolute_name(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: {tmp_path / 'elsewhere'}\n")
    assert main(["train", "supervised", "--config", str(cfg)]) == 2
    assert "name must be a plain name" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("override,match", [
    ("data.test_per_class=-1", "data.test_per_class must be >= 1, got -1"),
    ("data.train_per_class=0", "data.train_per_class must be >= 1"),
    ("ttt.steps=-1", "ttt.steps must be >= 1, got -1"),
    ("ttt.lr=0", "ttt.lr must be > 0"),
    ("ttt.lr=.nan", "ttt.lr must be > 0"),
    ("ttt.tau=0", "ttt.tau must be > 0"),
    ("ttt.protocol=nope", "ttt.protocol: unknown name"),
    ("ttt.bn=nope", "ttt.bn: unknown name"),
    ("threads=0", "threads must be >= 1"),
    ("threads=-2", "threads must be >= 1"),
    ("seed=-1", "seed must be >= 0"),
    ("device=nosuch", "device: not a torch device: 'nosuch'"),
    ("eval.corruptions=[nosuch]", "eval.corruptions: unknown name.*'nosuch'"),
    ("eval.corruptions=[]", "eval.corruptions: at least one"),
    ("eval.params=nosuch", "eval.params: unknown name.*'nosuch'"),
    ("eval.rows=[nope]", "eval.rows: unknown name"),
    ("model.arch=resnet9000", "model.arch: unknown name"),
    ("a=[", "--set a: cannot read the value '\\[' as YAML"),
    ("=3", "--set: expected a dotted key"),
])  # fmt: skip
def test_degenerate_values_fail_in_one_line(override, match):
    with pytest.raises(ValueError, match=match):
        load_config("demo", None, [override])


@pytest.mark.parametrize("command", [["demo"], ["train", "supervised", "--preset", "demo"], ["cta", "--preset", "demo"],
                                     ["bench", "--preset", "demo", "--methods", "source"]])
@pytest.mark.parametrize("override,match", [
    ("a=[", "cannot read the value"),
    ("eval.corruptions=[nosuch]", "eval.corruptions"),
    ("eval.params=imagenet", "too small for parameter set 'imagenet'"),  # only known once the data is read
])  # fmt: skip
def test_every_command_fails_in_one_line_before_training(tmp_path, monkeypatch, capsys, command, override, match):
    if "imagenet" in override and find_dataset("fashion-mnist")[0] is None:
        pytest.skip("this check runs once the data is read: needs Fashion-MNIST (dataset-fashion-mnist)")
    monkeypatch.chdir(tmp_path)
    extra = [] if command == ["demo"] else ["--run-dir", str(tmp_path / "run")]
    assert main([*command, *extra, "--set", override, "--set", "data.train_per_class=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_cuda_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["train", "supervised", "--preset", "demo", "--set", "device=cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


def test_config_file_messages(tmp_path):
    from testtime.cli import UserError

    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing\n")
    with pytest.raises(UserError, match="empty.yaml: the file is empty"):
        load_config(None, str(empty), [])
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="bin.yaml: not a UTF-8 text"):
        load_config(None, str(binary), [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("ttt:\n  steps: many\n")
    with pytest.raises(UserError, match="--config .*bad.yaml .*ttt.steps: expected an integer"):
        load_config(None, str(bad), [])


def test_data_messages_name_the_key():
    import numpy as np

    from testtime.train.pipeline import DataConfig, load_data, per_class_rows

    with pytest.raises(ValueError, match="data.test_per_class=5: class 0 has only 3"):
        per_class_rows(np.zeros(3, dtype=np.int64), 5, 0, where="data.test_per_class")
    with pytest.raises(ValueError, match=r"--set data.root=/path or the environment variable \$X") as e:
        load_data(DataConfig(root_env="X"))
    assert "$None" not in str(e.value)
    with pytest.raises(ValueError, match=r"needs its folder: --set data.root=/path$"):
        load_data(DataConfig(root_env=None))


def test_section_checks_name_their_section_and_protocol_fits_the_batch():
    with pytest.raises(ValueError, match="^supervised: batch_size must be >= 2"):
        load_config("demo", None, ["supervised.batch_size=1"])
    with pytest.raises(ValueError, match="ttt.protocol / ttt.batch_size: protocol 'single-sample' has batch_size 1"):
        load_config("demo", None, ["ttt.protocol=single-sample"])

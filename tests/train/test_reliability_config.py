"""Bad config values fail in one line before any work (issue 9: names, ranges, whole-config checks)."""

from __future__ import annotations

import pytest

from testtime.cli import main
from testtime.commands.train import load_config


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

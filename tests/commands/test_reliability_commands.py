"""Help texts, next steps, the demo's temporary folders, the demo preset's size (issue 9, should-fix)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testtime.cli import build_parser, main
from testtime.commands.demo import DEMO_PREFIX, remove_stale_demo_dirs
from testtime.commands.train import load_config


def _subparsers(parser):
    sub = next(a for a in parser._actions if a.dest in ("command", "data_command"))
    return sub.choices


def test_help_texts_have_no_rst_markup():
    for name, p in _subparsers(build_parser()).items():
        texts = [p.format_help()] + ([q.format_help() for q in _subparsers(p).values()] if name == "data" else [])
        for text in texts:
            assert "``" not in text and "::" not in text and ":func:" not in text, name


def test_train_and_cta_have_their_own_descriptions():
    choices = _subparsers(build_parser())
    train, cta = choices["train"].description, choices["cta"].description
    assert train != cta and train.startswith("Train one source-time stage") and cta.startswith("CTA end to end")


@pytest.mark.parametrize("argv", [["data", "list"], ["doctor"]])
def test_data_list_and_doctor_say_what_to_do_next(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "next:" in out and "testtime data list --root /path" in out


def test_stale_demo_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f"{DEMO_PREFIX}{pid}-abc"
    alive = tmp_path / f"{DEMO_PREFIX}{os.getppid()}-def"
    other = tmp_path / "testtime-demo-xyz"
    for d in (stale, alive, other):
        d.mkdir()
    assert remove_stale_demo_dirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and alive.exists() and other.exists()


def test_demo_preset_keeps_every_stage_small():
    cfg = load_config("demo", None, [])
    n = cfg.data.train_per_class * 10
    for t in (cfg.supervised, cfg.ssl.train, cfg.align.train, cfg.probe.train, cfg.joint.train):
        assert t.epochs * (n // t.batch_size) <= 100  # steps: `testtime cta --preset demo` in minutes, not hours

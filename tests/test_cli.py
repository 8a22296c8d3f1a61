import subprocess
import sys

from testtime.cli import build_parser


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert name in text and len(text) > 40


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "testtime.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("testtime ")


def test_no_command_prints_help_and_fails(capsys):
    from testtime.cli import main

    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out

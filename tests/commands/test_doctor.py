"""``testtime doctor``: versions, device, threads, and where each dataset was looked for."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from testtime.cli import main


def test_doctor_reports_versions_device_threads_and_datasets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESTTIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TESTTIME_DATA", str(tmp_path / "home"))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch   {torch.__version__}" in out and f"numpy   {np.__version__}" in out
    assert "python  3." in out and out.startswith("testtime ")
    assert ("device    cuda" in out) == torch.cuda.is_available()
    assert f"threads   torch {torch.get_num_threads()}" in out
    assert f"cache     {tmp_path / 'cache'}" in out
    for name in ("cifar10", "cifar100", "cifar10-c", "cifar100-c", "tiny-imagenet", "tiny-imagenet-c"):
        assert f"  {name} " in out
    assert f"looked in {tmp_path / 'home' / 'cifar10'}" in out
    fm = "/usr/share/datasets/fashion-mnist"
    if os.path.exists(f"{fm}/t10k-images-idx3-ubyte.gz"):
        assert f"fashion-mnist    found      {fm}" in out
    assert not (tmp_path / "cache").exists()  # doctor writes nothing


def test_doctor_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--help"])
    assert info.value.code == 0 and "where it looked" in capsys.readouterr().out


def test_doctor_console_script():
    """The installed entry point runs it in a fresh process (what scripts/demo.sh does)."""
    out = subprocess.run([sys.executable, "-m", "testtime.cli", "doctor"], capture_output=True, text=True)
    assert out.returncode == 0 and "datasets " in out.stdout

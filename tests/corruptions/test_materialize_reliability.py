"""`testtime corrupt` under faults (issue 9): one run per output folder, stale files, dying parents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from testtime.cli import main
from testtime.corruptions.materialize import _locked, materialize
from testtime.data.split import ImageSplit


def _split(n: int = 8, size: int = 32) -> ImageSplit:
    rng = np.random.default_rng(0)
    return ImageSplit(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2, ("a", "b"), "toy")


def test_second_run_into_a_folder_in_use_fails_naming_the_pid(tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    with _locked(out):
        with pytest.raises(ValueError, match=f"out: {out} is in use by pid {os.getpid()}"):
            materialize(_split(), out, corruptions=["contrast"], severities=[1], workers=0, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written
    materialize(_split(), out, corruptions=["contrast"], severities=[1], workers=0, progress=False)  # free again
    assert (out / "contrast.npy").is_file()


def test_cli_folder_in_use_is_one_line(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    for c in range(2):
        (root / "test" / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 40 * c, np.uint8)).save(root / "test" / f"c{c}" / "0.png")
    out = tmp_path / "D"
    out.mkdir()
    with _locked(out):
        rc = main(["corrupt", "--dataset", "imagefolder", "--root", str(root), "--out", str(out),
                   "--corruptions", "contrast", "--severities", "1", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"is in use by pid {os.getpid()}" in err[0]


def test_stale_partial_files_are_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "D"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "fog-3.npy").write_bytes(b"")  # a block of another, killed run
    (out / ".partial" / ".contrast-1.npy.tmp-99999").write_bytes(b"x")
    (out / ".labels.npy.tmp-99999").write_bytes(b"x")
    materialize(_split(), out, corruptions=["contrast"], severities=[1], workers=0, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "contrast.npy", "corruptions.json", "labels.npy"]


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


SCRIPT = textwrap.dedent("""
    import numpy as np, sys
    from testtime.corruptions.materialize import materialize
    from testtime.data.split import ImageSplit
    rng = np.random.default_rng(0)
    split = ImageSplit(rng.integers(0, 256, (400, 64, 64, 3), dtype=np.uint8), np.arange(400) % 2, ("a", "b"), "t")
    try:  # as the CLI does: one line on Ctrl-C
        materialize(split, sys.argv[1], corruptions=["glass_blur", "zoom_blur"], severities=[1, 2, 3, 4, 5],
                    params="tiny", workers=2, progress=False)
    except KeyboardInterrupt:
        sys.exit("interrupted")
""")


def _start(tmp_path: Path, settle: float = 6.0) -> tuple[subprocess.Popen, list[int]]:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "D")], env=env, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_children(p.pid)) < 3:  # 2 workers + the resource tracker
        time.sleep(0.2)
    kids = _children(p.pid)
    assert len(kids) >= 2, "the workers did not start"
    time.sleep(settle)  # the workers are importing / working
    return p, kids


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_parent_dies(tmp_path, sig):
    p, kids = _start(tmp_path)
    try:
        os.kill(p.pid, sig)
        p.wait(30)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.2)
        assert not [k for k in kids if _alive(k)], "workers or the resource tracker outlived their parent"
    finally:
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("settle", [0.5, 6.0])  # while the workers import torch; while they work
def test_ctrl_c_prints_no_worker_traceback(tmp_path, settle):
    p, kids = _start(tmp_path, settle)
    try:
        os.killpg(p.pid, signal.SIGINT)  # the terminal sends it to the whole process group
        _, err = p.communicate(timeout=60)
        assert "Traceback" not in err and err.strip() == "interrupted", err
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.2)
        assert not [k for k in kids if _alive(k)]
    finally:
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)

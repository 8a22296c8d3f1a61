"""The suite never writes to the user's cache (issue 9, must-fix 8)."""

from __future__ import annotations

from pathlib import Path

from testtime.data.paths import cache_dir, download_home


def test_cache_and_downloads_are_under_pytest_temporary_folder(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    for p in (cache_dir(), download_home()):
        assert base in p.parents, p
        assert Path.home() / ".cache" not in p.parents

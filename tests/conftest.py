"""Every test writes only under its temporary directory: a private cache and data home, whatever the test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """``$TESTTIME_CACHE`` (decoded splits, downloads) and ``$TESTTIME_DATA`` under pytest's temporary folder,
    never the user's ``~/.cache/testtime``; tests that need their own set them again (tests/data/conftest.py)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("TESTTIME_CACHE", str(base / "testtime-cache"))  # shared by the session: decode once
    monkeypatch.setenv("TESTTIME_DATA", str(base / "testtime-data-home"))

"""Bench settings that used to give silently wrong results (issue 9)."""

from __future__ import annotations

import pytest

from testtime.bench.grid import resolve_protocol
from testtime.bench.protocols import get_protocol
from testtime.commands.train import load_config


def test_single_sample_keeps_batch_size_1_whatever_the_preset():
    cfg = load_config("demo", None, [])
    assert cfg.ttt.batch_size == 125
    proto = resolve_protocol(cfg, "single-sample", None, None)
    assert proto.batch_size == 1 and "batch_size=1," in proto.describe()
    assert resolve_protocol(cfg, None, None, None).batch_size == 125  # the preset's own protocol keeps its size
    assert resolve_protocol(cfg, "continual", 7, None).batch_size == 7


def test_single_sample_with_another_batch_size_is_an_error():
    with pytest.raises(ValueError, match="'single-sample' has batch_size 1 by definition, got batch_size=125"):
        get_protocol("single-sample", batch_size=125)
    cfg = load_config("demo", None, [])
    with pytest.raises(ValueError, match="single-sample"):
        resolve_protocol(cfg, "single-sample", 10, None)

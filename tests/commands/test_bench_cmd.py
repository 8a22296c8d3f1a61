"""`testtime bench --stop-by WHEN`: the times it takes, and bad ones refused in one line before any work."""

from __future__ import annotations

import calendar

import pytest

from testtime.cli import UserError, main
from testtime.commands.bench import parse_stop_by

NOW = calendar.timegm((2026, 12, 7, 7, 30, 0))  # 2026-12-07 07:30 UTC


@pytest.mark.parametrize("text,minutes", [
    ("90m", 90), ("2h", 120), ("2h30m", 150), ("1h5m", 65),
    ("09:50", 140),                 # today, UTC
    ("07:00", 23 * 60 + 30),        # passed today: the next one, tomorrow
    ("2026-12-08 07:30", 24 * 60),
])
def test_stop_by_takes_a_utc_time_or_a_duration(text, minutes):
    assert parse_stop_by(text, now=NOW) == NOW + 60 * minutes


@pytest.mark.parametrize("text,match", [
    ("0m", "more than 0 minutes"),
    ("2026-12-07 07:00", "2026-12-07 07:00 UTC has passed"),
    ("25:00", "expected 'YYYY-MM-DD HH:MM' or 'HH:MM'"),
    ("soon", "expected 'YYYY-MM-DD HH:MM' or 'HH:MM'"),
    ("90", "expected 'YYYY-MM-DD HH:MM' or 'HH:MM'"),
])
def test_stop_by_refuses_what_is_not_a_future_time(text, match):
    with pytest.raises(UserError, match=match):
        parse_stop_by(text, now=NOW)


def test_stop_by_is_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["bench", "tiny", "--run-dir", str(run), "--stop-by", "2020-01-01 00:00"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--stop-by: 2020-01-01 00:00 UTC has passed" in err
    assert not run.exists()
    assert main(["bench", "--preset", "demo", "--run-dir", str(run), "--stop-by", "1h"]) == 2
    assert "--stop-by: only with a bench CONFIG" in capsys.readouterr().err
    assert not run.exists()

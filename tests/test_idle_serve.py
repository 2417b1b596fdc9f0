"""An idle ``serve`` sleeps: its server wakes once a second, not ten times, and still stops at
once on a signal and keeps its ``Date`` header current (web/server.py, ``Server``).

Each test runs a real ``ingress-box serve`` process.
"""

from __future__ import annotations

import signal
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from serving import BoxProcess
from waiting import eventually


def _date(box: BoxProcess) -> str:
    return httpx.get(box.url + "/healthz", timeout=5).headers["date"]


def test_a_signal_stops_serve_at_once_not_at_its_next_tick(tmp_path: Path) -> None:
    """With the server's tick made an hour long, SIGTERM still ends serve (exit 0) within
    the stop's deadline: the signal wakes the loop instead of waiting for the tick."""
    box = BoxProcess(
        tmp_path / "box.db", prelude="import ingress_box.web.server as s; s.TICK_SECONDS = 3600"
    )
    try:
        box.wait_ready()
        assert box.stop(signal.SIGTERM, timeout=30) == 0, box.output()
    finally:
        box.kill()


def test_the_date_header_moves_on_while_serve_runs(tmp_path: Path) -> None:
    """The server refreshes ``Date`` on its once-a-second tick: a later answer has a later
    date (a tick that never refreshed it would leave the first one forever)."""
    box = BoxProcess(tmp_path / "box.db")
    try:
        box.wait_ready()
        first = parsedate_to_datetime(_date(box))

        def later() -> datetime | None:
            date = parsedate_to_datetime(_date(box))
            return date if date > first else None

        moved = eventually(later, 10, "a Date header later than the first", interval=0.2)
        assert (moved - first).total_seconds() <= 5
    finally:
        box.stop()

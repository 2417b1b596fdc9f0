"""/readyz on a real box: ready only while the database commits and the worker runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN
from live import LiveBox, running_box
from postgres import write_locked
from waiting import eventually

from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.worker import Worker

pytestmark = pytest.mark.both_stores


@pytest.fixture
def quick_settings(store: Path | DatabaseUrl) -> Settings:
    # A short busy timeout, so a locked database is reported in a fraction of a second.
    return load_settings({}, db_path=store, admin_token=ADMIN_TOKEN, busy_timeout_seconds=0.2)


@pytest.fixture
def live(quick_settings: Settings) -> Iterator[LiveBox]:
    with running_box(quick_settings) as box:
        yield box


def test_readyz_is_200_with_a_writable_database_and_a_running_worker(live: LiveBox) -> None:
    """A fresh box with its worker is ready."""
    answer = httpx.get(f"{live.url}/readyz")
    assert (answer.status_code, answer.json()) == (200, {"ready": True})


def test_readyz_is_503_when_the_worker_is_stopped(live: LiveBox) -> None:
    """Once the worker stops, /readyz answers 503 and says why."""
    assert isinstance(live.box.worker, Worker)  # the real one, which can be stopped
    live.box.worker.stop()
    answer = httpx.get(f"{live.url}/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"ready": False, "problems": ["worker not running"]}


def test_readyz_is_503_while_the_database_cannot_be_written(live: LiveBox) -> None:
    """Another connection holding the write lock past the busy timeout makes it 503, then 200."""
    with write_locked(live.box.db):
        answer = httpx.get(f"{live.url}/readyz", timeout=10)
        assert answer.status_code == 503
        (problem,) = answer.json()["problems"]
        # SQLite says "database is locked"; PostgreSQL "canceling statement due to lock timeout".
        assert problem.startswith("database not writable") and "lock" in problem
    # Ready again once the lock is gone (on PostgreSQL a write the lock made time out may take
    # its next round to land).
    eventually(
        lambda: httpx.get(f"{live.url}/readyz", timeout=10).status_code == 200, 10, "ready again"
    )

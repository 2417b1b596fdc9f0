"""/readyz on a real box: ready only while the database commits and the worker runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN
from live import LiveBox, running_box

from ingress_box.config import Settings, load_settings
from ingress_box.worker import Worker


@pytest.fixture
def quick_settings(tmp_path: Path) -> Settings:
    # A short busy timeout, so a locked database is reported in a fraction of a second.
    return load_settings(
        {}, db_path=tmp_path / "box.db", admin_token=ADMIN_TOKEN, busy_timeout_seconds=0.2
    )


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


def test_readyz_is_503_while_the_database_cannot_be_written(
    live: LiveBox, quick_settings: Settings
) -> None:
    """Another connection holding the write lock past the busy timeout makes it 503, then 200."""
    blocker = sqlite3.connect(str(quick_settings.db_path), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        answer = httpx.get(f"{live.url}/readyz", timeout=10)
        assert answer.status_code == 503
        (problem,) = answer.json()["problems"]
        assert problem.startswith("database not writable") and "locked" in problem
        blocker.execute("ROLLBACK")
        assert httpx.get(f"{live.url}/readyz", timeout=10).status_code == 200
    finally:
        blocker.close()

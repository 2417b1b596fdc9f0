"""huey's queue on SQLite waits for another connection's write lock in short steps."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import postgres
import pytest

from ingress_box.store import queue as queue_module
from ingress_box.store.queue import PostgresQueue, SqliteQueue


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteQueue]:
    storage = SqliteQueue("q", filename=str(tmp_path / "box.db"), timeout=5.0)
    yield storage
    storage.close()


@contextmanager
def locked(path: str) -> Iterator[None]:
    """Another connection in the middle of a write transaction on the file."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_an_enqueue_waits_out_another_writer_in_short_steps(queue: SqliteQueue) -> None:
    """huey's connection has no busy timeout of SQLite's (whose sleeps reach 100 ms while the
    storage's lock keeps every consumer thread out): an enqueue behind a lock held a third of
    a second lands once it is released, and a dequeue then takes it."""
    assert queue.sql("PRAGMA busy_timeout", results=True) == [(0,)]
    done = threading.Event()

    def enqueue() -> None:
        queue.enqueue(b"task")
        done.set()

    with locked(queue.filename):
        thread = threading.Thread(target=enqueue)
        thread.start()
        time.sleep(0.3)  # the other writer's transaction, not a wait for an event
        assert not done.is_set()
    assert done.wait(5)
    thread.join(5)
    assert queue.dequeue() == b"task"


def test_an_enqueue_behind_a_lock_held_past_the_timeout_fails(tmp_path: Path) -> None:
    """The wait is bounded by huey's timeout: then the lock's error, as SQLite's own wait gave."""
    storage = SqliteQueue("q", filename=str(tmp_path / "box.db"), timeout=0.2)
    try:
        with locked(storage.filename):
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                storage.enqueue(b"task")
            assert 0.2 <= time.monotonic() - started < 2.0
        storage.enqueue(b"task")  # the connection is usable again
        assert storage.dequeue() == b"task"
    finally:
        storage.close()


def test_a_watching_queue_hands_out_a_drain_when_another_connection_leaves_work(
    queue: SqliteQueue,
) -> None:
    """With no task enqueued, the poll that sees another connection's commit asks ``ready``;
    when it says there is work, a dequeue returns the watcher's drain, once."""
    work = threading.Event()
    queue.watch(work.is_set, lambda: b"drain")
    taken: list[bytes] = []

    def consume() -> None:  # a consumer thread: dequeue until it gets something
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not taken:
            data = queue.dequeue()
            if data is not None:
                taken.append(data)

    thread = threading.Thread(target=consume)
    thread.start()
    work.set()
    other = sqlite3.connect(queue.filename, isolation_level=None)
    try:
        other.execute("CREATE TABLE made_by_another (n INTEGER)")  # a commit the poll sees
    finally:
        other.close()
    thread.join(15)
    assert taken == [b"drain"]
    queue.close_waits()  # an idle dequeue would wait up to WAIT_SECONDS for a wake-up
    assert queue.dequeue() is None  # handed out once


def test_the_schedule_is_read_only_when_a_task_of_this_queue_is_due(tmp_path: Path) -> None:
    """huey's scheduler asks every second; the file is read (a write-locking transaction)
    only when a task this queue scheduled is due: behind another writer's lock, a read before
    that answers at once, and the read at the due time waits for the lock like any write."""
    storage = SqliteQueue("q", filename=str(tmp_path / "box.db"), timeout=0.2)
    try:
        now = datetime(2026, 1, 1, 12, 0)
        assert storage.read_schedule(now) == []  # the first call always looks
        storage.add_to_schedule(b"later", now + timedelta(hours=1))
        with locked(storage.filename):
            assert storage.read_schedule(now + timedelta(minutes=59)) == []
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                storage.read_schedule(now + timedelta(hours=1))
        assert storage.read_schedule(now + timedelta(hours=1)) == [b"later"]
        assert storage.read_schedule(now + timedelta(hours=2)) == []
    finally:
        storage.close()


def test_another_connections_schedule_is_read_at_the_next_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task another process scheduled is not known here: the look every
    SCHEDULE_LOOK_SECONDS finds it, not the reads before (a minute by default)."""
    path = str(tmp_path / "box.db")
    now = datetime(2026, 1, 1, 12, 0)

    def read_after_another_schedules(name: str) -> list[bytes]:
        mine, other = SqliteQueue(name, filename=path), SqliteQueue(name, filename=path)
        try:
            assert mine.read_schedule(now) == []  # the first call always looks
            other.add_to_schedule(b"theirs", now)
            return mine.read_schedule(now + timedelta(seconds=1))
        finally:
            mine.close()
            other.close()

    assert read_after_another_schedules("minute") == []
    monkeypatch.setattr(queue_module, "SCHEDULE_LOOK_SECONDS", 0.0)
    assert read_after_another_schedules("always") == [b"theirs"]


def test_a_stop_wakes_the_thread_waiting_on_postgresqls_listen_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL the polling thread waits on its LISTEN connection, not on the condition:
    close_waits notifies the channel, so that thread returns now even with a wait made an
    hour long."""
    monkeypatch.setattr(queue_module, "LISTEN_SECONDS", 3600.0)
    with postgres.fresh_schema() as url:
        storage = PostgresQueue("q", dsn=url)
        try:
            waiting = threading.Event()
            peek = storage._dequeue_peek

            def peek_then_wait() -> bool:
                found = peek()
                waiting.set()  # the thread goes on to its LISTEN wait
                return found

            monkeypatch.setattr(storage, "_dequeue_peek", peek_then_wait)
            returned = threading.Event()

            def consume() -> None:
                assert storage.dequeue() is None
                returned.set()

            thread = threading.Thread(target=consume, daemon=True)
            thread.start()
            assert waiting.wait(10), "the thread never reached its LISTEN wait"
            storage.close_waits()
            assert returned.wait(10), "the waiting thread did not return after the stop"
            thread.join(10)
        finally:
            storage.close()

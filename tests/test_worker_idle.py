"""An idle worker costs little and still takes work from another process at once.

The box here runs without a worker of its own (``run_worker`` off, as ``serve
--no-run-worker``): it only enqueues drains through its own connection to the queue. The
worker is a separate :class:`Worker` on its own connection, as ``ingress-box worker`` runs, so
every wake-up it gets comes through the database (the file's ``data_version``, or PostgreSQL's
``NOTIFY``), never through this process's Condition.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_target import FakeTarget
from live import SECRET, LiveBox, add_instance, running_box
from signers import sign_generic
from waiting import eventually

from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.store import open_database
from ingress_box.worker import Worker, wake_workers

URL = "/ingress/generic/main/events"
# Statements a second on the queue's connection of an idle worker: 10 to 50 data_version reads
# (one every 20 to 100 ms), the other consumer threads' rare looks and the scheduler's second.
# Polling the task table from each of its 4 threads every 20 ms made it 200 and more.
IDLE_STATEMENTS_PER_SECOND = 60


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings({}, db_path=store, admin_token="t" * 16, run_worker=False, workers=4)


@pytest.fixture
def live(settings: Settings, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(settings) as box:
        add_instance(box.box, target_url=target.url)
        yield box


@pytest.fixture
def worker(settings: Settings, live: LiveBox) -> Iterator[Worker]:
    db = open_database(settings.db_path).open()
    worker = Worker(settings, db, watch_outbox=True)  # as `ingress-box worker` runs
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        db.close()


def send(live: LiveBox, n: int) -> None:
    body = f'{{"n":{n}}}'.encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=f"d-{n}")}
    assert httpx.post(live.url + URL, content=body, headers=headers).status_code == 202


@pytest.mark.both_stores
def test_a_webhook_accepted_by_another_connection_is_delivered_within_a_second(
    live: LiveBox, worker: Worker, target: FakeTarget
) -> None:
    """The poll (or the notification) finds the drain the box enqueued: no wait for the minute
    sweep."""
    for n in range(3):  # the first one may meet the worker's start-up; the others meet it idle
        started = time.monotonic()
        send(live, n)
        target.wait_for(n + 1, timeout=10)
        assert time.monotonic() - started < 1.0, f"webhook {n} waited for the sweep"


def test_on_sqlite_the_box_enqueues_no_drain_per_webhook_for_a_watching_worker(
    live: LiveBox, worker: Worker, target: FakeTarget
) -> None:
    """``ingress-box worker`` watches the file's outbox: the box's accepts reach it with no
    task in huey's queue (each was an enqueue by the box, and a dequeue there)."""
    box_worker = live.box.worker
    assert isinstance(box_worker, Worker)
    statements: list[str] = []
    box_worker.huey.storage.conn.set_trace_callback(statements.append)
    try:
        for n in range(5):  # one at a time: each would have found the queue empty
            send(live, n)
            target.wait_for(n + 1, timeout=10)
    finally:
        box_worker.huey.storage.conn.set_trace_callback(None)
    enqueues = [s for s in statements if s.lower().startswith("insert into task")]
    assert len(enqueues) <= 1, enqueues  # the box's start-up wake may fall in the window


@pytest.mark.both_stores
def test_a_drain_enqueued_by_wake_workers_is_taken_from_the_queue(
    settings: Settings, worker: Worker
) -> None:
    """What the CLI does after a redrive: a task in the queue, from another connection."""
    assert wake_workers(settings)
    eventually(
        lambda: worker.huey.pending_count() == 0, 1.0, "the worker to take the drain from the queue"
    )


def test_an_idle_worker_reads_its_queue_a_few_times_a_second(worker: Worker) -> None:
    """One thread reads ``data_version`` for all; the task table is read when it moved."""
    statements: list[str] = []
    conn = worker.huey.storage.conn
    conn.set_trace_callback(statements.append)
    try:
        started = time.monotonic()
        time.sleep(2.0)  # a window measured, not an event waited for
        seconds = time.monotonic() - started
        counted = len(statements)
        # A poll must come; on a loaded machine it may come after the window (CI saw none in it).
        eventually(lambda: any("data_version" in s for s in statements), 10, "a poll of the file")
    finally:
        conn.set_trace_callback(None)
    rate = counted / seconds
    assert rate < IDLE_STATEMENTS_PER_SECOND, (rate, statements[:20])


@pytest.mark.both_stores
def test_an_idle_worker_stops_at_once(settings: Settings, live: LiveBox) -> None:
    """Consumer threads waiting for the poller are let go by stop(), not by their timeout."""
    db = open_database(settings.db_path).open()
    try:
        worker = Worker(settings, db, watch_outbox=True)  # as `ingress-box worker` runs
        worker.start()
        time.sleep(0.3)  # let every consumer thread reach its wait (a window, not an event)
        started = time.monotonic()
        worker.stop()
        assert time.monotonic() - started < 0.5
    finally:
        db.close()

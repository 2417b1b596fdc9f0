"""The hand-off: the accept transaction leases new rows for this process's worker.

A row handed over is leased exactly as a claim leases it (owner, lease, first attempt
counted), and only when a claim could take it now: a row behind its lane is left for a claim
once the head's outcome frees the lane. Through the real app, a steady trickle of webhooks is
delivered without a single claim transaction, and a lane's second event still waits for the
first.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, box_of
from fake_target import FakeTarget
from live import SECRET, add_instance, insert_instance
from signers import sign_generic
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box import app as app_module
from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, Settings
from ingress_box.store import Database, open_database
from ingress_box.store import instances as store_instances
from ingress_box.store import outbox as store_outbox
from ingress_box.store.acceptor import Acceptor
from ingress_box.store.deliveries import NewDelivery
from ingress_box.store.outbox import Claimed
from ingress_box.store.sql import DATABASE_ERRORS, Conn, dialect
from ingress_box.worker import Worker

pytestmark = pytest.mark.both_stores


class Taker:
    """A Handoff that records what it is given (the worker's side is tested through the app)."""

    owner = "worker-1"
    lease_seconds = 60.0

    def __init__(self, wanted: int) -> None:
        self.want = wanted
        self.taken: list[tuple[list[Claimed], int, str]] = []

    def now(self) -> float:
        return T0

    def wanted(self) -> int:
        return self.want

    def take(self, rows: list[Claimed], left: int, version: str) -> None:
        self.taken.append((rows, left, version))


def delivery(n: int, conversation: str | None) -> NewDelivery:
    return NewDelivery(
        id=f"msg_handoff{n:04d}",
        plugin_id="generic",
        instance_id="main",
        route="events",
        provider_delivery_id=f"p-{n}",
        conversation=conversation,
        method="POST",
        subpath="",
        content_type="application/json",
        headers=json.dumps({"x-delivery": f"p-{n}"}),
        body=b'{"n": %d}' % n,
        received_at=T0,
    )


@pytest.fixture
def db(store: Path | DatabaseUrl) -> Iterator[Database]:
    opened = open_database(store).open()
    yield opened
    opened.close()


def accept_in_one_batch(db: Database, taker: Taker | None, items: list[NewDelivery]) -> list[Any]:
    """Accept ``items`` concurrently, all in one writer batch (the writer is held meanwhile)."""
    acceptor = Acceptor(db)
    acceptor.handoff = taker
    version = store_instances.version(db)
    release = threading.Event()
    db.submit(lambda conn: release.wait(10))  # the writer waits: every accept joins one flush

    async def main() -> list[Any]:
        pending = [asyncio.ensure_future(acceptor.accept(d, version)) for d in items]
        await asyncio.sleep(0)  # let each one queue itself
        release.set()
        return [await p for p in pending]

    return asyncio.run(main())


def leases(db: Database) -> dict[int, tuple[str | None, int]]:
    rows = db.read(
        "SELECT o.delivery_seq, o.lease_owner, d.attempts FROM outbox AS o "
        "JOIN deliveries AS d ON d.seq = o.delivery_seq"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def test_new_rows_claimable_now_are_leased_and_handed_over_after_the_commit(
    db: Database,
) -> None:
    taker = Taker(wanted=8)
    items = [delivery(1, "chat-a"), delivery(2, "chat-a"), delivery(3, None)]
    results = accept_in_one_batch(db, taker, items)
    assert [is_new for is_new, _ in results] == [True, True, True]
    [(rows, left, version)] = taker.taken
    assert [r.event.id for r in rows] == ["msg_handoff0001", "msg_handoff0003"]
    assert left == 1  # the second of chat-a waits for the first
    assert version == store_instances.version(db)
    first = rows[0]
    assert first.lease_until == T0 + 60 and first.event.attempt == 1
    assert first.event.headers == {"x-delivery": "p-1"} and first.event.body == b'{"n": 1}'
    by_seq = leases(db)
    assert by_seq[rows[0].seq] == ("worker-1", 1) and by_seq[rows[1].seq] == ("worker-1", 1)
    [waiting] = [seq for seq in by_seq if seq not in {r.seq for r in rows}]
    assert by_seq[waiting] == (None, 0)


def test_a_row_handed_over_is_what_a_claim_would_have_leased(db: Database) -> None:
    """Same lease, same attempt count, same event: the rest of the worker cannot tell."""
    handed = Taker(wanted=1)
    accept_in_one_batch(db, handed, [delivery(1, "chat-a")])
    [([row], _, _)] = handed.taken
    db.write(store_outbox.release("worker-1"))  # give it back, then claim it the usual way
    [claimed] = db.write(store_outbox.claim("worker-1", T0, 60, 10))
    assert replace(claimed, lease_until=row.lease_until) == row


def test_without_a_wanting_worker_every_row_is_left_for_a_claim(db: Database) -> None:
    taker = Taker(wanted=0)
    accept_in_one_batch(db, taker, [delivery(1, None), delivery(2, "chat-b")])
    assert [(rows, left) for rows, left, _ in taker.taken] == [([], 2)]
    assert set(leases(db).values()) == {(None, 0)}


def test_a_worker_wanting_one_row_gets_one(db: Database) -> None:
    taker = Taker(wanted=1)
    accept_in_one_batch(db, taker, [delivery(1, None), delivery(2, None)])
    [(rows, left, _)] = taker.taken
    assert len(rows) == 1 and left == 1


def test_a_duplicate_is_neither_handed_over_nor_counted(db: Database) -> None:
    taker = Taker(wanted=8)
    accept_in_one_batch(db, taker, [delivery(1, None)])
    accept_in_one_batch(db, taker, [delivery(1, None)])
    assert [(len(rows), left) for rows, left, _ in taker.taken] == [(1, 0)]


# A trigger that fails every outbox insert, as a full disk would.
_FAIL_INSERTS = {
    "sqlite": [
        "CREATE TRIGGER no_commit AFTER INSERT ON outbox "
        "BEGIN SELECT RAISE(FAIL, 'disk says no'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION no_commit() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'disk says no'; END $$",
        "CREATE TRIGGER no_commit AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION no_commit()",
    ],
}


def test_a_row_whose_accept_fails_is_not_handed_over(db: Database) -> None:
    taker = Taker(wanted=8)

    def fail_inserts(conn: Conn) -> None:
        for sql in _FAIL_INSERTS[dialect(conn)]:
            conn.execute(sql)

    db.write(fail_inserts)
    with pytest.raises(DATABASE_ERRORS):
        accept_in_one_batch(db, taker, [delivery(1, None)])
    assert taker.taken == []


# -- the worker's side of a hand-off -----------------------------------------------------------


def handed_row(db: Database, target: FakeTarget) -> tuple[Claimed, str]:
    """One new row of generic/main (forwarding to ``target``), leased to ``Taker.owner`` by its
    accept until T0 + 60; and the instances version the accept checked."""
    insert_instance(db, target_url=target.url)
    taker = Taker(wanted=1)
    accept_in_one_batch(db, taker, [delivery(1, None)])
    [([row], _, version)] = taker.taken
    return row, version


def test_a_handed_row_whose_lease_ran_out_is_given_back_not_attempted(
    settings: Settings, db: Database, target: FakeTarget
) -> None:
    """Past its lease another process may have claimed it: attempting it too would deliver it
    twice. The attempt is not made and the lease goes back (if it is still this worker's)."""
    row, _ = handed_row(db, target)
    worker = Worker(settings, db, clock=lambda: T0 + 61)
    worker.owner = Taker.owner
    try:
        worker._deliver_claimed([row])
        eventually(lambda: leases(db)[row.seq] == (None, 0), 10, "the lease given back")
    finally:
        worker.stop()
    assert target.received == []


def test_rows_handed_to_this_process_are_delivered_here_when_its_drain_starts_elsewhere(
    settings: Settings, db: Database, target: FakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huey's queue may be shared with other processes (PostgreSQL, several on one file): the
    drain a hand-off asks for can run in another one, which cannot take rows leased here. Left
    alone they would wait out their lease and then be delivered twice (the duplicate storm
    over three serves saw it); the kicker drains them here instead."""
    row, version = handed_row(db, target)
    asked: list[int] = []
    worker = Worker(settings, db, clock=lambda: T0 + 1)
    worker.owner = Taker.owner
    monkeypatch.setattr(worker, "_drain", lambda: asked.append(1))  # runs "elsewhere"
    worker.start()
    try:
        worker.take([row], 0, version)
        eventually(lambda: len(target.received) == 1, 10, "the handed row delivered here")
        eventually(lambda: not leases(db), 10, "its outcome committed")
    finally:
        worker.stop()
    assert asked, "a drain was asked of huey first"
    assert len(target.received) == 1


# -- through the app -------------------------------------------------------------------------


def test_a_trickle_is_delivered_without_claim_transactions_and_lanes_keep_order(
    settings: Settings, target: FakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[int] = []
    real_claim = store_outbox.claim

    def counted(*args: Any) -> Any:
        op = real_claim(*args)

        def run(conn: sqlite3.Connection) -> Any:
            found = op(conn)
            claims.append(len(found))
            return found

        return run

    monkeypatch.setattr(store_outbox, "claim", counted)
    # One drain, idling through the whole test however slow the machine: a drain that ended
    # (1 s without work) is started again through huey and claims, which is right but not
    # what this test is about.
    monkeypatch.setattr(app_module, "IDLE_SECONDS", 60.0)
    settings = replace(settings, workers=1)
    with TestClient(create_app(settings)) as client:
        add_instance(box_of(client), target_url=target.url)
        eventually(lambda: claims, 5, "the first drain's look in the outbox")
        worker = box_of(client).worker
        assert isinstance(worker, Worker)
        # Idle, past its first look (whose wait for a lease due soon would look again).
        eventually(lambda: worker._idling == 1, 5, "the drain to idle")
        looked = len(claims)
        for n in range(5):  # one at a time, each delivered before the next is sent
            body = b'{"n": %d}' % n
            headers = sign_generic(SECRET, body, msg_id=f"t-{n}")
            answer = client.post("/ingress/generic/main/events", content=body, headers=headers)
            assert answer.status_code == 202
            target.wait_for(n + 1)
        assert claims[looked:] == []  # every one was handed over by its accept
        assert [json.loads(r.body)["n"] for r in target.received] == [0, 1, 2, 3, 4]


class _CountedWaits(threading.Condition):
    """A Condition that counts the waits begun on it."""

    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_a_drain_woken_to_find_its_work_taken_idles_on(settings: Settings) -> None:
    # A notify whose row another drain (done with its attempt) popped first must not end the
    # idle drain: at 320 webhooks/s that made huey start a drain again every 60 ms or so.
    db = open_database(settings.db_path).open()
    worker = Worker(settings, db, idle_seconds=60.0)
    worker._idle = idle = _CountedWaits()
    found: list[bool] = []
    drain = threading.Thread(target=lambda: found.append(worker._wait_for_work()))
    try:
        drain.start()
        eventually(lambda: idle.waits == 1, 5, "the drain to idle")
        with idle:
            idle.notify()  # as take() does, but the row is gone already
        eventually(lambda: idle.waits == 2 or found, 5, "the drain to see nothing came")
        assert found == []  # still idling, not ended
        with idle:
            worker._handed.append(Claimed(1, delivery(1, None).event(), T0 + 60))
            idle.notify()
        drain.join(5)
        assert found == [True]
    finally:
        worker.stop()  # wakes the drain if it still idles
        drain.join(5)
        db.close()

"""The store: group commit, dedup by the unique index, lane-ordered claims, settling."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import scalar
from postgres import write_locked
from waiting import eventually

from ingress_box.config import DatabaseUrl
from ingress_box.errors import StorageUnavailable
from ingress_box.store import Database, activity, open_database, outbox
from ingress_box.store import dead_letters as dlq
from ingress_box.store import deliveries as d
from ingress_box.store.acceptor import Acceptor
from ingress_box.store.dead_letters import Selection
from ingress_box.store.instances import version, without_public_url_in
from ingress_box.store.sql import INTEGRITY_ERRORS, Conn

pytestmark = pytest.mark.both_stores

URL = '{"public_url": "https://hooks.example.com"}'


@pytest.fixture
def db(store: Path | DatabaseUrl) -> Iterator[Database]:
    database = open_database(store).open()
    yield database
    database.close()


def new(
    provider_id: str,
    conversation: str | None = None,
    plugin: str = "generic",
    instance: str = "main",
    at: float = 1000.0,
) -> d.NewDelivery:
    return d.NewDelivery(
        id=f"msg_{plugin}_{instance}_{provider_id}",
        plugin_id=plugin,
        instance_id=instance,
        route="events",
        provider_delivery_id=provider_id,
        conversation=conversation,
        method="POST",
        subpath="",
        content_type="application/json",
        headers="{}",
        body=b'{"n": 1}',
        received_at=at,
    )


def accept(db: Database, item: d.NewDelivery) -> bool:
    return db.write(lambda conn: d.accept(conn, item))


def claim(
    db: Database, now: float = 2000.0, limit: int = 10, owner: str = "w1"
) -> list[outbox.Claimed]:
    claimed: list[outbox.Claimed] = db.write(outbox.claim(owner, now, 60.0, limit))
    return claimed


def settle(
    db: Database,
    row: outbox.Claimed,
    outcome: str,
    now: float = 2000.0,
    strict: bool = False,
    owner: str = "w1",
    next_at: float = 0.0,
) -> bool:
    settled: bool = db.write(
        outbox.record_outcome(
            outbox.Outcome(
                seq=row.seq,
                owner=owner,
                outcome=outcome,
                started_at=now,
                duration_ms=1.0,
                error=None if outcome == "delivered" else "HTTP 500: no",
                next_attempt_at=next_at,
                dead_letter_id=f"dlq_{row.seq}",
                strict=strict,
            ),
            now,
        )
    )
    return settled


def test_schema_is_created_on_an_empty_path(tmp_path: Path) -> None:
    """Opening a path that does not exist creates the folder, the file and every table."""
    database = Database(tmp_path / "nested" / "box.db").open()
    tables = {r[0] for r in database.read("SELECT name FROM sqlite_master WHERE type='table'")}
    database.close()
    assert {"deliveries", "outbox", "dead_letters", "instances", "attempts"} <= tables


def test_wal_and_synchronous_full_are_set(tmp_path: Path) -> None:
    """The file runs in WAL mode and the writer commits with synchronous=FULL."""
    db = Database(tmp_path / "box.db").open()
    try:
        assert scalar(db, "PRAGMA journal_mode") == "wal"
        assert db.write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 2
    finally:
        db.close()


def test_the_writer_keeps_its_temporary_storage_in_memory(tmp_path: Path) -> None:
    """temp_store = MEMORY (2) on the writer: a big batch never spills into a file of the
    system's temporary folder (created, written and deleted per spill, outside the volume)."""
    db = Database(tmp_path / "box.db").open()
    try:
        assert db.write(lambda conn: conn.execute("PRAGMA temp_store").fetchone()[0]) == 2
    finally:
        db.close()


def test_a_write_waits_out_another_writer_in_short_steps(tmp_path: Path) -> None:
    """The writer's connection has no busy timeout of its own (SQLite's sleeps up to 100 ms
    between tries): Database._begin tries again every few milliseconds. A batch behind a lock
    held for a third of a second (many pauses) commits once it is released, not failing."""
    db = Database(tmp_path / "box.db", busy_timeout=5.0).open()
    try:
        assert db.write(lambda conn: conn.execute("PRAGMA busy_timeout").fetchone()[0]) == 0
        with write_locked(db):
            waiting = db.submit(lambda conn: d.accept(conn, new("behind-the-lock")))
            time.sleep(0.3)  # the other writer's transaction, not a wait for an event
            assert not waiting.done()
        assert waiting.result(timeout=5) is True
    finally:
        db.close()


def test_same_dedup_key_is_stored_once(db: Database) -> None:
    """INSERT OR IGNORE on the unique index: the second accept reports a duplicate."""
    assert accept(db, new("a")) is True
    assert accept(db, new("a")) is False
    assert scalar(db, "SELECT count(*) FROM deliveries") == 1
    assert scalar(db, "SELECT count(*) FROM outbox") == 1


def test_same_provider_id_under_another_instance_is_new(db: Database) -> None:
    """The dedup key includes plugin and instance."""
    assert accept(db, new("a", instance="one"))
    assert accept(db, new("a", instance="two"))
    assert accept(db, new("a", plugin="github"))


def test_concurrent_writers_share_commits_and_all_land(db: Database) -> None:
    """Many threads writing at once all get their result, and fewer commits than writes."""
    batches: list[int] = []
    db.on_commit.append(batches.append)
    results: list[bool] = []

    def post(i: int) -> None:
        results.append(accept(db, new(f"id-{i}")))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 200
    assert sum(batches) == 200
    assert scalar(db, "SELECT count(*) FROM deliveries") == 200


def test_a_lazy_write_waits_for_the_next_write_to_share_its_transaction(tmp_path: Path) -> None:
    """An outcome (lazy) and the next accept commit together; a lone lazy write still commits."""
    db = Database(tmp_path / "linger.db", linger=30.0).open()  # long: the test decides when
    try:
        batches: list[int] = []
        db.on_commit.append(batches.append)
        lazy = db.submit(lambda conn: d.accept(conn, new("lazy-1")), durable=False, lazy=True)
        eventually(lambda: db.queued() == 0, 5, "the writer to take the lazy write")
        assert not lazy.done()  # it lingers, waiting for company
        assert accept(db, new("next-1")) is True
        assert lazy.result(timeout=5) is True
        assert batches == [2]  # one transaction for both
    finally:
        db.close()
    short = Database(tmp_path / "short.db", linger=0.01).open()
    try:
        alone = short.submit(lambda conn: d.accept(conn, new("lazy-2")), durable=False, lazy=True)
        assert alone.result(timeout=5) is True
    finally:
        short.close()


def test_a_lone_op_that_fails_is_rolled_back_and_the_writer_goes_on(db: Database) -> None:
    """Without a savepoint (it runs alone), a failing op still leaves nothing behind."""

    def half_then_fail(conn: Conn) -> None:
        d.accept(conn, new("half-1"))
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        db.write(half_then_fail)
    assert scalar(db, "SELECT count(*) FROM deliveries WHERE provider_delivery_id = 'half-1'") == 0
    assert accept(db, new("after-1")) is True


def test_a_failing_op_does_not_undo_its_batch_mates(db: Database) -> None:
    """Each op runs in a savepoint: one error is returned to its caller only."""

    def bad(conn: Conn) -> None:
        conn.execute("INSERT INTO deliveries (seq) VALUES (NULL)")  # violates NOT NULL

    futures: list[concurrent.futures.Future[Any]] = [
        db.submit(lambda conn: d.accept(conn, new("ok-1"))),
        db.submit(bad),
        db.submit(lambda conn: d.accept(conn, new("ok-2"))),
    ]
    assert futures[0].result() is True
    with pytest.raises(INTEGRITY_ERRORS):
        futures[1].result()
    assert futures[2].result() is True


def test_locked_database_is_storage_unavailable(store: Path | DatabaseUrl) -> None:
    """A write that cannot get the lock within the busy timeout fails as StorageUnavailable."""
    database = open_database(store, busy_timeout=0.2).open()
    try:
        with write_locked(database), pytest.raises(StorageUnavailable):
            accept(database, new("x"))
        assert accept(database, new("x")) is True
    finally:
        database.close()


def test_a_write_that_times_out_behind_a_locked_batch_says_the_lock(
    store: Path | DatabaseUrl,
) -> None:
    """An op whose deadline passes in the queue, while the batch ahead waits for another
    connection's lock, fails on that lock (/readyz tells the operator why), not on the queue."""
    database = open_database(store, busy_timeout=1.0).open()
    try:
        with write_locked(database):
            ahead = database.submit(lambda conn: d.accept(conn, new("ahead")))
            eventually(lambda: database.queued() == 0, 5, "the writer to take the first batch")
            database.busy_timeout = 0.05  # the next op's deadline passes while the batch waits
            behind = database.submit(lambda conn: d.accept(conn, new("behind")))
            for future in (ahead, behind):
                with pytest.raises(StorageUnavailable, match="lock"):
                    future.result(timeout=10)
    finally:
        database.close()


def test_claim_takes_only_the_head_of_each_lane(db: Database) -> None:
    """Rows of one conversation are claimable one at a time, oldest first."""
    for i in range(3):
        accept(db, new(f"c{i}", conversation="chat-1"))
    accept(db, new("free"))
    rows = claim(db)
    assert [r.event.provider_delivery_id for r in rows] == ["c0", "free"]
    assert claim(db) == []


def test_settling_the_head_releases_the_next_in_its_lane(db: Database) -> None:
    """After the head is delivered, the next row of that lane becomes claimable."""
    for i in range(2):
        accept(db, new(f"c{i}", conversation="chat-1"))
    head = claim(db)[0]
    assert settle(db, head, "delivered")
    assert [r.event.provider_delivery_id for r in claim(db)] == ["c1"]


def test_a_head_in_backoff_holds_its_lane(db: Database) -> None:
    """A retried head keeps later rows of its lane waiting until it is due again."""
    for i in range(2):
        accept(db, new(f"c{i}", conversation="chat-1"))
    head = claim(db, now=2000.0)[0]
    settle(db, head, "retry", next_at=2100.0)
    assert claim(db, now=2050.0) == []
    again = claim(db, now=2100.0)
    assert [r.event.provider_delivery_id for r in again] == ["c0"]
    assert again[0].event.attempt == 2


def test_expired_lease_is_claimable_again(db: Database) -> None:
    """A crashed worker's row comes back after its lease."""
    accept(db, new("a"))
    assert len(claim(db, now=2000.0, owner="dead-worker")) == 1
    assert claim(db, now=2030.0, owner="w2") == []
    assert len(claim(db, now=2061.0, owner="w2")) == 1


def test_settle_by_a_former_owner_is_ignored(db: Database) -> None:
    """A retry reported after the lease moved on does not touch the new owner's lease."""
    accept(db, new("a"))
    first = claim(db, now=2000.0, owner="old")[0]
    claim(db, now=2061.0, owner="new")
    assert settle(db, first, "retry", owner="old", next_at=9999.0) is False
    lease = db.read_one("SELECT lease_owner FROM outbox")
    assert lease is not None and lease[0] == "new"


def test_dead_in_progress_lane_moves_on(db: Database) -> None:
    """Progress policy: the dead head leaves the lane and the next row is claimable."""
    for i in range(2):
        accept(db, new(f"c{i}", conversation="chat-1"))
    settle(db, claim(db)[0], "dead")
    assert [r.event.provider_delivery_id for r in claim(db)] == ["c1"]
    state = db.read_one("SELECT state FROM deliveries WHERE provider_delivery_id = 'c0'")
    assert state is not None and state[0] == "dead"


def test_dead_in_strict_lane_waits_for_redrive(db: Database) -> None:
    """Strict policy: the lane waits until its dead head is redriven, then resumes in order."""
    for i in range(2):
        accept(db, new(f"c{i}", conversation="chat-1"))
    settle(db, claim(db)[0], "dead", strict=True)
    assert claim(db) == []
    assert db.write(dlq.redrive(Selection(), 100, 2001.0)) == (1, 0)
    assert [r.event.provider_delivery_id for r in claim(db, now=2002.0)] == ["c0"]


def test_redrive_is_once(db: Database) -> None:
    """A second redrive finds nothing open."""
    accept(db, new("a"))
    settle(db, claim(db)[0], "dead")
    assert db.write(dlq.redrive(Selection(), 100, 2001.0)) == (1, 0)
    assert db.write(dlq.redrive(Selection(), 100, 2002.0)) == (0, 0)


def test_redrive_works_in_bounded_batches(db: Database) -> None:
    """Redrive moves at most ``limit`` rows and reports what remains."""
    for i in range(5):
        accept(db, new(f"x{i}"))
    for row in claim(db):
        settle(db, row, "dead")
    assert db.write(dlq.redrive(Selection(), 2, 2001.0)) == (2, 3)
    assert db.write(dlq.redrive(Selection(), 10, 2002.0)) == (3, 0)


def test_redrive_resets_the_attempt_budget_and_keeps_the_id(db: Database) -> None:
    """A redriven delivery starts again at attempt 1 with the same webhook id."""
    accept(db, new("a"))
    first = claim(db)[0]
    settle(db, first, "dead")
    db.write(dlq.redrive(Selection(), 10, 2001.0))
    again = claim(db, now=2002.0)[0]
    assert (again.event.id, again.event.attempt) == (first.event.id, 1)


def test_release_gives_back_leases(db: Database) -> None:
    """Graceful shutdown releases every lease of its owner, so others claim at once."""
    accept(db, new("a"))
    claim(db, owner="leaving")
    assert db.write(outbox.release("leaving")) == 1
    assert len(claim(db, owner="other")) == 1


def test_an_accept_checked_against_old_configuration_is_refused(db: Database) -> None:
    """The batch insert refuses a request verified under an instances version now gone."""

    async def accept(v: str) -> tuple[bool | None, str]:
        return await Acceptor(db).accept(new("v"), v)

    current = version(db)
    assert asyncio.run(accept("stale-" + current)) == (None, current)
    assert scalar(db, "SELECT count(*) FROM deliveries") == 0
    assert asyncio.run(accept(current)) == (True, current)


def test_the_last_hours_flows_count_a_delivery_in_the_minute_it_came(db: Database) -> None:
    """A delivery 59.7 s into the window's first minute counts in that minute, not the next
    (a minute is cut down, never rounded)."""
    now = 10_000.0
    accept(db, new("early", at=now - 3600 + 59.7))
    accept(db, new("late", at=now - 0.2))

    async def read() -> activity.Activity:
        await db.aopen()
        try:
            return await activity.aactivity(db, now)
        finally:
            await db.aclose()

    flows = asyncio.run(read())
    assert (flows.received[0], flows.received[1], flows.received[-1]) == (1, 0, 1)
    assert flows.pending == 2


def test_instances_without_a_public_url_are_named(db: Database) -> None:
    """The doctor's check reads the config's public_url on either engine: empty or missing is
    named, set is not, and other plugins are not looked at."""
    rows = [("bare", "{}"), ("blank", '{"public_url": ""}'), ("set", URL)]
    db.write(
        lambda conn: conn.executemany(
            "INSERT INTO instances (plugin_id, instance_id, secret, outbound_secret, "
            "config, created_at, updated_at) VALUES ('twilio', ?, 's', 'o', ?, 1, 1)",
            rows,
        )
    )
    found = db.write(lambda conn: without_public_url_in(conn, ["twilio", "meta"]))
    assert found == ["twilio/bare", "twilio/blank"]
    assert db.write(lambda conn: without_public_url_in(conn, ["meta"])) == []

"""Retention: payloads go first, dedup keys after their window, dead letters last, pending never."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import scalar

from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.store import Database, open_database, outbox, retention
from ingress_box.store import deliveries as d

pytestmark = pytest.mark.both_stores

DAY = 86_400.0
T0 = 1_700_000_000.0


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings(
        {},
        db_path=store,
        payload_retention_days=1,
        dedup_retention_days=7,
        dlq_retention_days=90,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings.db_path).open()
    yield database
    database.close()


def add(db: Database, provider_id: str, outcome: str | None, at: float = T0) -> None:
    """A delivery accepted at ``at`` and, unless outcome is None, settled then."""
    new = d.NewDelivery(
        id=f"msg_{provider_id}",
        plugin_id="generic",
        instance_id="main",
        route="events",
        provider_delivery_id=provider_id,
        conversation=None,
        method="POST",
        subpath="",
        content_type="text/plain",
        headers="{}",
        body=b"payload",
        received_at=at,
    )
    db.write(lambda conn: d.accept(conn, new))
    if outcome is None:
        return
    claimed = db.write(outbox.claim("w", at, 60, 100))
    row = next(r for r in claimed if r.event.provider_delivery_id == provider_id)
    db.write(
        outbox.record_outcome(
            outbox.Outcome(
                seq=row.seq,
                owner="w",
                outcome=outcome,
                started_at=at,
                duration_ms=1,
                error="HTTP 400",
                dead_letter_id=f"dlq_{provider_id}",
            ),
            at,
        )
    )


def body_of(db: Database, provider_id: str) -> bytes | None:
    row = db.read_one("SELECT body FROM deliveries WHERE provider_delivery_id = ?", (provider_id,))
    assert row is not None
    return None if row[0] is None else bytes(row[0])


def exists(db: Database, provider_id: str) -> bool:
    return (
        db.read_one("SELECT 1 FROM deliveries WHERE provider_delivery_id = ?", (provider_id,))
        is not None
    )


def test_delivered_payloads_are_dropped_after_their_window(
    db: Database, settings: Settings
) -> None:
    """After payload_retention_days the body goes but the dedup key stays."""
    add(db, "old", "delivered")
    add(db, "fresh", "delivered", at=T0 + 2 * DAY)
    report = retention.run(db, settings, now=T0 + 2 * DAY + 1)
    assert report["payloads_dropped"] == 1
    assert body_of(db, "old") is None and exists(db, "old")
    assert body_of(db, "fresh") == b"payload"


def test_dedup_keys_are_pruned_after_their_window(db: Database, settings: Settings) -> None:
    """A delivered event older than dedup_retention_days is forgotten, so a resend is new."""
    add(db, "a", "delivered")
    retention.run(db, settings, now=T0 + 8 * DAY)
    assert not exists(db, "a")
    add(db, "a", None, at=T0 + 8 * DAY)
    assert exists(db, "a")


def test_dead_letters_outlive_the_dedup_window(db: Database, settings: Settings) -> None:
    """A dead event is kept (payload included) for dlq_retention_days, then pruned."""
    add(db, "dead", "dead")
    retention.run(db, settings, now=T0 + 30 * DAY)
    assert body_of(db, "dead") == b"payload"
    assert scalar(db, "SELECT count(*) FROM dead_letters") == 1
    retention.run(db, settings, now=T0 + 91 * DAY)
    assert not exists(db, "dead")
    assert scalar(db, "SELECT count(*) FROM dead_letters") == 0


def test_pending_events_are_never_pruned(db: Database, settings: Settings) -> None:
    """However old, an event not yet delivered keeps its row and its payload."""
    add(db, "waiting", None)
    retention.run(db, settings, now=T0 + 1000 * DAY)
    assert body_of(db, "waiting") == b"payload"
    assert scalar(db, "SELECT count(*) FROM outbox") == 1


def test_pruning_works_in_bounded_batches(db: Database, settings: Settings) -> None:
    """More rows than one batch are all pruned, batch by batch."""
    for i in range(retention.BATCH + 20):
        add(db, f"x{i}", "delivered")
    report = retention.run(db, settings, now=T0 + 8 * DAY)
    assert report["delivered_pruned"] == retention.BATCH + 20


def test_checkpoint_truncates_the_wal(db: Database, settings: Settings) -> None:
    """After maintenance the WAL file is empty again; PostgreSQL's log is its own business."""
    for i in range(50):
        add(db, f"w{i}", None)
    report = retention.run(db, settings, now=T0)
    if not isinstance(settings.db_path, Path):
        assert report["checkpoint"] == []
        return
    wal = Path(str(settings.db_path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_dead_letter_is_kept_from_when_it_died_not_when_it_arrived(
    db: Database, settings: Settings
) -> None:
    """An old event that died again recently keeps its dead letter for the whole window."""
    add(db, "old", "dead")
    db.write(lambda conn: conn.execute("UPDATE dead_letters SET created_at = ?", (T0 + 80 * DAY,)))
    retention.run(db, settings, now=T0 + 100 * DAY)
    assert exists(db, "old")
    retention.run(db, settings, now=T0 + 171 * DAY)
    assert not exists(db, "old")

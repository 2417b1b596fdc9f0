"""Retention: what may be forgotten, in bounded batches, and (on SQLite) WAL checkpoints.

- payloads of delivered events go first (``payload_retention_days``);
- delivered events themselves, and so their dedup keys, after ``dedup_retention_days``;
- dead letters and their events after ``dlq_retention_days``.
A pending event, or the parked head of a strict lane, is never pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..config import Settings
from .db import Database, connect
from .sql import Conn, dialect

log = logging.getLogger(__name__)

BATCH = 500
DAY = 86_400.0

_DROP_PAYLOADS = """
UPDATE deliveries SET body = NULL WHERE seq IN (
    SELECT seq FROM deliveries
    WHERE state = 'delivered' AND body IS NOT NULL AND delivered_at < ? LIMIT ?)
"""
_OLD_DELIVERED = "SELECT seq FROM deliveries WHERE state = 'delivered' AND delivered_at < ? LIMIT ?"
_OLD_DEAD = """
SELECT d.seq FROM deliveries AS d
WHERE d.state = 'dead'
  AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.delivery_seq = d.seq)
  AND coalesce((SELECT max(x.created_at) FROM dead_letters AS x WHERE x.delivery_seq = d.seq),
               d.received_at) < ?
LIMIT ?
"""


def _prune_deliveries(select_sql: str, cutoff: float) -> Callable[[Conn], int]:
    def op(conn: Conn) -> int:
        seqs = [r[0] for r in conn.execute(select_sql, (cutoff, BATCH))]
        if not seqs:
            return 0
        marks = ",".join("?" * len(seqs))
        for table, column in (
            ("attempts", "delivery_seq"),
            ("dead_letters", "delivery_seq"),
            ("deliveries", "seq"),
        ):
            conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", seqs)
        return len(seqs)

    return op


def _drop_payloads(cutoff: float) -> Callable[[Conn], int]:
    def op(conn: Conn) -> int:
        dropped: int = conn.execute(_DROP_PAYLOADS, (cutoff, BATCH)).rowcount
        return dropped

    return op


def _until_done(
    db: Database, op: Callable[[Conn], int], progress: Callable[[int], None] | None
) -> int:
    total = 0
    while True:
        done = db.write(op)
        total += done
        if progress is not None:
            progress(done)
        if done < BATCH:
            return total


# The LIMIT that is none: SQLite's is any negative number, PostgreSQL's is NULL.
_NO_LIMIT = {"sqlite": -1, "postgresql": None}


def due(db: Database, settings: Settings, now: float) -> int:
    """How many rows :func:`run` would touch now (payloads dropped plus events pruned)."""
    unlimited = _NO_LIMIT[dialect(db)]
    row = db.read_one(
        f"SELECT (SELECT count(*) FROM deliveries WHERE state = 'delivered' AND body IS NOT NULL"
        f" AND delivered_at < ?), (SELECT count(*) FROM ({_OLD_DELIVERED}) AS delivered),"
        f" (SELECT count(*) FROM ({_OLD_DEAD}) AS dead)",
        (
            now - settings.payload_retention_days * DAY,
            now - settings.dedup_retention_days * DAY,
            unlimited,
            now - settings.dlq_retention_days * DAY,
            unlimited,
        ),
    )
    return sum(row) if row is not None else 0


def run(
    db: Database, settings: Settings, now: float, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Prune what the retention windows allow, then checkpoint; returns what was done.

    ``progress`` is called after each batch with the rows it touched (for a progress bar).
    """
    report: dict[str, Any] = {
        "payloads_dropped": _until_done(
            db, _drop_payloads(now - settings.payload_retention_days * DAY), progress
        ),
        "delivered_pruned": _until_done(
            db,
            _prune_deliveries(_OLD_DELIVERED, now - settings.dedup_retention_days * DAY),
            progress,
        ),
        "dead_pruned": _until_done(
            db, _prune_deliveries(_OLD_DEAD, now - settings.dlq_retention_days * DAY), progress
        ),
    }
    report["checkpoint"] = checkpoint(db)
    log.info("retention: %s", report)
    return report


def checkpoint(db: Database) -> list[int]:
    """Copy the WAL into the database and truncate it, so the file does not grow unbounded."""
    if db.dialect != "sqlite":  # PostgreSQL keeps its own log: nothing to copy back
        return []
    conn = connect(db.path, db.synchronous, db.busy_timeout)
    try:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return [int(x) for x in row]
    finally:
        conn.close()

"""What the box is doing now: backlog, the last hour's flows per minute, waiting lanes.

Read-only queries for the dashboard. Neither ``deliveries.received_at`` nor
``attempts.started_at`` is indexed, but both grow with their table's rowid, so the last hour is
found by walking the rowid down from the newest row until it is older than the window: the cost
follows the last hour's traffic, not the table's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .db import Database

MINUTES = 60

# Rows newer than the newest row older than :since (rowids grow with time). An attempt row is
# written when it ends, so its walk stops 300 s earlier: longer than any attempt's timeout.
_RECEIVED = """
SELECT CAST((received_at - :since) / 60 AS INTEGER) AS minute, count(*) AS n
FROM deliveries
WHERE seq > coalesce((SELECT seq FROM deliveries WHERE received_at < :since
                      ORDER BY seq DESC LIMIT 1), 0)
  AND received_at >= :since
GROUP BY minute
"""
_SETTLED = """
SELECT CAST((started_at + duration_ms / 1000.0 - :since) / 60 AS INTEGER) AS minute,
       outcome, count(*) AS n
FROM attempts
WHERE id > coalesce((SELECT id FROM attempts WHERE started_at < :since - 300
                     ORDER BY id DESC LIMIT 1), 0)
  AND started_at + duration_ms / 1000.0 >= :since
  AND outcome IN ('delivered', 'dead')
GROUP BY minute, outcome
"""
_REDRIVEN = """
SELECT CAST((redriven_at - :since) / 60 AS INTEGER) AS minute, count(*) AS n
FROM dead_letters WHERE redriven_at >= :since GROUP BY minute
"""
_NOW = """
SELECT (SELECT count(*) FROM outbox) AS outbox_depth,
       (SELECT count(*) FROM deliveries WHERE state = 'pending') AS pending,
       (SELECT count(*) FROM outbox WHERE parked = 1) AS parked,
       (SELECT count(*) FROM dead_letters WHERE redriven_at IS NULL) AS dead_open,
       (SELECT d.received_at FROM deliveries AS d
        WHERE d.seq = (SELECT min(delivery_seq) FROM outbox WHERE parked = 0)) AS oldest_pending_at
"""


@dataclass(frozen=True)
class Activity:
    """The box now, and per-minute flows over the last hour (index 0 is the oldest minute)."""

    now: float
    outbox_depth: int
    pending: int
    parked: int
    dead_open: int
    oldest_pending_at: float | None
    received: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    redriven: list[int] = field(default_factory=list)

    @property
    def oldest_pending_age(self) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, self.now - self.oldest_pending_at)

    def backlog(self) -> list[int]:
        """Pending deliveries at the end of each minute, replayed back from the count now.

        Pending grows by what was received or redriven and shrinks by what was delivered or
        dead-lettered, so walking those flows backwards from now gives the past backlog.
        """
        series, level = [0] * MINUTES, self.pending
        for minute in range(MINUTES - 1, -1, -1):
            series[minute] = max(0, level)
            level -= (
                self.received[minute]
                + self.redriven[minute]
                - self.delivered[minute]
                - self.dead[minute]
            )
        return series


def _per_minute(rows: list[Any], outcome: str | None = None) -> list[int]:
    series = [0] * MINUTES
    for row in rows:
        if outcome is not None and row["outcome"] != outcome:
            continue
        # The clock may sit exactly on a minute's end: count that instant in the last minute.
        series[min(max(int(row["minute"]), 0), MINUTES - 1)] += int(row["n"])
    return series


async def aactivity(db: Database, now: float) -> Activity:
    since = now - MINUTES * 60
    counts = await db.aread_one(_NOW)
    assert counts is not None  # an aggregate always answers one row
    received = await db.aread(_RECEIVED, {"since": since})
    settled = await db.aread(_SETTLED, {"since": since})
    redriven = await db.aread(_REDRIVEN, {"since": since})
    return Activity(
        now=now,
        outbox_depth=counts["outbox_depth"],
        pending=counts["pending"],
        parked=counts["parked"],
        dead_open=counts["dead_open"],
        oldest_pending_at=counts["oldest_pending_at"],
        received=_per_minute(received),
        delivered=_per_minute(settled, "delivered"),
        dead=_per_minute(settled, "dead"),
        redriven=_per_minute(redriven),
    )


# -- lanes -----------------------------------------------------------------------------------

_LANES = """
WITH lanes AS (
    SELECT lane, count(*) AS waiting, min(delivery_seq) AS head
    FROM outbox WHERE lane IS NOT NULL GROUP BY lane)
SELECT l.waiting, d.id, d.plugin_id, d.instance_id, d.conversation, d.attempts, d.last_error,
       d.received_at, o.available_at, o.lease_until, o.parked
FROM lanes AS l
JOIN outbox AS o ON o.delivery_seq = l.head
JOIN deliveries AS d ON d.seq = l.head
ORDER BY o.parked DESC, l.waiting DESC, l.head
LIMIT ?
"""


async def awaiting_lanes(db: Database, limit: int) -> list[dict[str, Any]]:
    """Conversation lanes with work queued, parked ones first, then the longest."""
    return [
        {
            "waiting": r["waiting"],
            "head": r["id"],
            "plugin": r["plugin_id"],
            "instance": r["instance_id"],
            "conversation": r["conversation"],
            "attempts": r["attempts"],
            "last_error": r["last_error"],
            "received_at": r["received_at"],
            "next_attempt_at": r["available_at"],
            "leased": r["lease_until"] is not None,
            "parked": bool(r["parked"]),
        }
        for r in await db.aread(_LANES, (limit,))
    ]


# -- search ----------------------------------------------------------------------------------

# The inner query reads only the dedup index (it holds the provider id and the rowid), never
# the rows with their bodies; the same provider id may exist under several instances.
_BY_PROVIDER_ID = """
SELECT id FROM deliveries
WHERE seq IN (SELECT seq FROM deliveries WHERE provider_delivery_id = ?)
ORDER BY seq DESC LIMIT ?
"""


async def afind(db: Database, text: str, limit: int) -> list[str]:
    """Ids of deliveries whose ``webhook-id`` or provider delivery id is ``text``."""
    rows = await db.aread("SELECT id FROM deliveries WHERE id = ?", (text,))
    if rows:
        return [rows[0]["id"]]
    return [r["id"] for r in await db.aread(_BY_PROVIDER_ID, (text, limit))]

"""What the box is doing now: backlog, the last hour's flows per minute, waiting lanes.

Read-only queries for the dashboard and the doctor; the backlog's figures are
:mod:`ingress_box.store.backlog`'s. Neither ``deliveries.received_at`` nor
``attempts.started_at`` is indexed, but both grow with their table's key (``seq``, ``id``), so
the last hour is found by walking the key down from the newest row until it is older than the
window: the cost follows the last hour's traffic, not the table's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backlog import Backlog, abacklog
from .db import Database
from .outbox import IS_LANE_HEAD
from .sql import Conn, dialect

MINUTES = 60

# Rows newer than the newest row older than :since (seqs and ids grow with time). An attempt
# row is written when it ends, so its walk stops 300 s earlier: longer than any attempt's
# timeout. A minute is the time since :since cut down to whole minutes: SQLite's CAST truncates,
# PostgreSQL's rounds, so it takes floor() (the times are never before :since).
_MINUTE = {
    "sqlite": "CAST(({at} - :since) / 60 AS INTEGER)",
    "postgresql": "CAST(floor(({at} - :since) / 60) AS INTEGER)",
}
_RECEIVED = {
    engine: f"""
SELECT {minute.format(at="received_at")} AS minute, count(*) AS n
FROM deliveries
WHERE seq > coalesce((SELECT seq FROM deliveries WHERE received_at < :since
                      ORDER BY seq DESC LIMIT 1), 0)
  AND received_at >= :since
GROUP BY minute
"""
    for engine, minute in _MINUTE.items()
}
_SETTLED = {
    engine: f"""
SELECT {minute.format(at="started_at + duration_ms / 1000.0")} AS minute, outcome, count(*) AS n
FROM attempts
WHERE id > coalesce((SELECT id FROM attempts WHERE started_at < :since - 300
                     ORDER BY id DESC LIMIT 1), 0)
  AND started_at + duration_ms / 1000.0 >= :since
  AND outcome IN ('delivered', 'dead')
GROUP BY minute, outcome
"""
    for engine, minute in _MINUTE.items()
}
_REDRIVEN = {
    engine: f"""
SELECT {minute.format(at="redriven_at")} AS minute, count(*) AS n
FROM dead_letters WHERE redriven_at >= :since GROUP BY minute
"""
    for engine, minute in _MINUTE.items()
}
_PENDING = "SELECT count(*) FROM deliveries WHERE state = 'pending'"


@dataclass(frozen=True)
class Activity:
    """The box now, and per-minute flows over the last hour (index 0 is the oldest minute)."""

    now: float
    backlog: Backlog
    pending: int  # deliveries in state pending (a parked head is dead, so not among them)
    received: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    redriven: list[int] = field(default_factory=list)

    def backlog_per_minute(self) -> list[int]:
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
    pending = await db.aread_one(_PENDING)
    assert pending is not None  # an aggregate always answers one row
    engine = dialect(db)
    received = await db.aread(_RECEIVED[engine], {"since": since})
    settled = await db.aread(_SETTLED[engine], {"since": since})
    redriven = await db.aread(_REDRIVEN[engine], {"since": since})
    return Activity(
        now=now,
        backlog=await abacklog(db, now),
        pending=pending[0],
        received=_per_minute(received),
        delivered=_per_minute(settled, "delivered"),
        dead=_per_minute(settled, "dead"),
        redriven=_per_minute(redriven),
    )


# -- lanes -----------------------------------------------------------------------------------

_LANES = """
WITH lanes AS (
    SELECT lane, count(*) AS waiting, min(seq) AS head
    FROM outbox WHERE lane IS NOT NULL GROUP BY lane)
SELECT l.waiting, d.id, d.plugin_id, d.instance_id, d.conversation, d.attempts, d.last_error,
       d.received_at, o.available_at, o.lease_until, o.parked
FROM lanes AS l
JOIN outbox AS o ON o.seq = l.head
JOIN deliveries AS d ON d.seq = o.delivery_seq
ORDER BY o.parked DESC, l.waiting DESC, l.head
LIMIT ?
"""


@dataclass(frozen=True)
class Lane:
    """A conversation lane with work queued, described by its head."""

    waiting: int
    head: str  # the head delivery's id
    plugin_id: str
    instance_id: str
    conversation: str
    attempts: int
    last_error: str | None
    received_at: float
    next_attempt_at: float
    leased: bool
    parked: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "head": self.head,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "conversation": self.conversation,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "received_at": self.received_at,
            "next_attempt_at": self.next_attempt_at,
            "leased": self.leased,
            "parked": self.parked,
        }


async def awaiting_lanes(db: Database, limit: int) -> list[Lane]:
    """Conversation lanes with work queued, parked ones first, then the longest."""
    return [
        Lane(
            waiting=r["waiting"],
            head=r["id"],
            plugin_id=r["plugin_id"],
            instance_id=r["instance_id"],
            conversation=r["conversation"],
            attempts=r["attempts"],
            last_error=r["last_error"],
            received_at=r["received_at"],
            next_attempt_at=r["available_at"],
            leased=r["lease_until"] is not None,
            parked=bool(r["parked"]),
        )
        for r in await db.aread(_LANES, (limit,))
    ]


# A lane head is stuck when it is parked, or has been tried often, or has waited long.
_STUCK_HEADS = f"""
SELECT d.id, d.plugin_id, d.instance_id, d.attempts, d.received_at, o.parked,
       (SELECT count(*) FROM outbox AS w WHERE w.lane = o.lane) AS waiting
FROM outbox AS o JOIN deliveries AS d ON d.seq = o.delivery_seq
WHERE o.lane IS NOT NULL
  AND {IS_LANE_HEAD}
  AND (o.parked = 1 OR d.attempts >= ? OR d.received_at < ?)
ORDER BY o.parked DESC, d.received_at
"""


@dataclass(frozen=True)
class StuckHead:
    id: str
    plugin_id: str
    instance_id: str
    attempts: int
    received_at: float
    parked: bool
    waiting: int  # rows of its lane, itself included


def stuck_heads_in(conn: Conn, attempts: int, received_before: float) -> list[StuckHead]:
    """Lane heads parked, tried ``attempts`` times or more, or received before the cutoff;
    parked first, then the oldest (read on ``conn``, a snapshot)."""
    return [
        StuckHead(
            id=r["id"],
            plugin_id=r["plugin_id"],
            instance_id=r["instance_id"],
            attempts=r["attempts"],
            received_at=r["received_at"],
            parked=bool(r["parked"]),
            waiting=r["waiting"],
        )
        for r in conn.execute(_STUCK_HEADS, (attempts, received_before))
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

"""The backlog's figures, each defined once: outbox depth, parked, leased, oldest pending, open
dead letters.

The dashboard, ``/metrics``, ``ingress-box stats`` and ``doctor`` all read :class:`Backlog`, so
they agree. The outbox depth is every row waiting in the outbox, parked ones included (a parked
row is the dead head of a strict lane, which holds its lane until a redrive or a discard), and
the parked rows are counted on their own as well. The oldest pending delivery is the oldest
row that the worker may still attempt, so never a parked one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .db import Database
from .sql import Conn

# The outbox's delivery_seq is unique (indexed) and the delivery's seq grows with received_at:
# the first unparked row by it is the oldest received one waiting, found without a scan of the
# whole outbox. (A replayed delivery keeps its received_at, so it counts as old as it is.)
_BACKLOG = """
SELECT (SELECT count(*) FROM outbox) AS depth,
       (SELECT count(*) FROM outbox WHERE parked = 1) AS parked,
       (SELECT count(*) FROM outbox WHERE lease_until >= :now) AS leased,
       (SELECT count(DISTINCT lane) FROM outbox) AS lanes,
       (SELECT d.received_at FROM deliveries AS d
        WHERE d.seq = (SELECT min(delivery_seq) FROM outbox WHERE parked = 0))
           AS oldest_pending_at,
       (SELECT count(*) FROM dead_letters WHERE redriven_at IS NULL) AS dead_open
"""


@dataclass(frozen=True)
class Backlog:
    """What waits, at ``now``."""

    now: float
    depth: int  # outbox rows, parked ones included
    parked: int  # dead heads of strict lanes, waiting for a redrive or a discard
    leased: int  # being attempted now
    lanes: int  # conversation lanes with rows waiting
    oldest_pending_at: float | None  # received_at of the oldest row the worker may attempt
    dead_open: int  # dead letters not redriven

    @property
    def waiting(self) -> int:
        """Rows the worker may still attempt (depth less the parked)."""
        return self.depth - self.parked

    @property
    def oldest_pending_age(self) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, self.now - self.oldest_pending_at)


def _backlog(row: Any, now: float) -> Backlog:
    assert row is not None  # scalar subqueries always answer one row
    return Backlog(
        now=now,
        depth=row["depth"],
        parked=row["parked"],
        leased=row["leased"],
        lanes=row["lanes"],
        oldest_pending_at=row["oldest_pending_at"],
        dead_open=row["dead_open"],
    )


def backlog(db: Database, now: float) -> Backlog:
    return _backlog(db.read_one(_BACKLOG, {"now": now}), now)


async def abacklog(db: Database, now: float) -> Backlog:
    return _backlog(await db.aread_one(_BACKLOG, {"now": now}), now)


def backlog_in(conn: Conn, now: float) -> Backlog:
    """The same, read inside a transaction already open on ``conn`` (a snapshot)."""
    return _backlog(conn.execute(_BACKLOG, {"now": now}).fetchone(), now)

"""The outbox, as the worker sees it: claim lane heads with a lease, record outcomes, release.

Only the head of each conversation lane is claimable, and only while no other row of that lane
is leased: that is what keeps a conversation in order without holding a worker. Recording an
outcome checks that the lease is still ours. A claim hands out the handler's own
:class:`~ingress_box.event.Event` plus the row's ``seq`` (:class:`Claimed`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..event import Event
from . import health
from .db import Database
from .sql import Dialect, dialect


@dataclass(frozen=True)
class Claimed:
    """A leased outbox row: the event its handler gets, the row's key to record the outcome,
    and when the lease runs out (no attempt may start that could outlive it)."""

    seq: int
    event: Event
    lease_until: float


# Whether outbox row ``o`` is the head (the row queued first) of its lane.
IS_LANE_HEAD = "o.seq = (SELECT min(h.seq) FROM outbox AS h WHERE h.lane = o.lane)"
# Events of one conversation of one instance share a lane; others are independent (NULL).
# The parts are joined by a character no plugin or instance id holds: NUL on SQLite, the unit
# separator on PostgreSQL (whose text cannot hold NUL).
LANE_SQL = {
    "sqlite": "CASE WHEN conversation IS NULL THEN NULL "
    "ELSE plugin_id || char(0) || instance_id || char(0) || conversation END",
    "postgresql": "CASE WHEN conversation IS NULL THEN NULL "
    "ELSE plugin_id || chr(31) || instance_id || chr(31) || conversation END",
}
LANE_JOIN = {"sqlite": "\0", "postgresql": "\x1f"}


def lane_of(event: Event, engine: Dialect = "sqlite") -> str | None:
    """The lane of ``event``'s row, as LANE_SQL computes it."""
    if event.conversation is None:
        return None
    return LANE_JOIN[engine].join((event.plugin, event.instance, event.conversation))


# -- the worker's claims and outcomes --------------------------------------------------------

_CLAIMABLE = f"""
    SELECT o.seq FROM outbox AS o
    WHERE o.parked = 0
      AND o.available_at <= :now
      AND (o.lease_until IS NULL OR o.lease_until < :now)
      AND (o.lane IS NULL OR (
            {IS_LANE_HEAD}
            AND NOT EXISTS (SELECT 1 FROM outbox AS l
                            WHERE l.lane = o.lane AND l.lease_until >= :now
                              AND l.seq != o.seq)))
    ORDER BY o.seq
    LIMIT :limit"""
# On PostgreSQL, rows another transaction holds are skipped, not waited for; the partial
# unique index outbox_one_lease_per_lane refuses a second leased row in a lane.
_CLAIM = {
    "sqlite": f"""
UPDATE outbox SET lease_until = :until, lease_owner = :owner
WHERE seq IN ({_CLAIMABLE})
RETURNING delivery_seq
""",
    "postgresql": f"""
UPDATE outbox SET lease_until = :until, lease_owner = :owner
WHERE seq IN ({_CLAIMABLE} FOR UPDATE OF o SKIP LOCKED)
RETURNING delivery_seq
""",
}
_CLAIMED_ROWS = """
SELECT seq, id, plugin_id, instance_id, route, provider_delivery_id, conversation, method,
       subpath, content_type, headers, body, attempts, received_at
FROM deliveries WHERE seq IN ({marks}) ORDER BY seq
"""


def claimable(db: Database, now: float) -> bool:
    """Whether a claim at ``now`` would lease a row (a read; for a worker watching the file)."""
    return bool(db.read(_CLAIMABLE, {"now": now, "limit": 1}))


def claim(owner: str, now: float, lease_seconds: float, limit: int) -> Any:
    """An op that leases up to ``limit`` claimable rows and counts their attempt."""

    def op(conn: sqlite3.Connection) -> list[Claimed]:
        seqs = [
            r[0]
            for r in conn.execute(
                _CLAIM[dialect(conn)],
                {"until": now + lease_seconds, "owner": owner, "now": now, "limit": limit},
            ).fetchall()
        ]
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        conn.execute(f"UPDATE deliveries SET attempts = attempts + 1 WHERE seq IN ({marks})", seqs)
        rows = conn.execute(_CLAIMED_ROWS.format(marks=marks), seqs).fetchall()
        return [
            Claimed(
                lease_until=now + lease_seconds,
                seq=r["seq"],
                event=Event(
                    id=r["id"],
                    plugin=r["plugin_id"],
                    instance=r["instance_id"],
                    route=r["route"],
                    provider_delivery_id=r["provider_delivery_id"],
                    conversation=r["conversation"],
                    method=r["method"],
                    subpath=r["subpath"],
                    content_type=r["content_type"],
                    headers=json.loads(r["headers"]),
                    body=bytes(r["body"] or b""),
                    attempt=r["attempts"],
                    received_at=r["received_at"],
                ),
            )
            for r in rows
        ]

    return op


# A row just inserted is claimable at once unless an older row of its lane is still there.
_LEASE_NEW = """
UPDATE outbox SET lease_until = ?, lease_owner = ?
WHERE delivery_seq IN ({marks})
  AND (lane IS NULL OR NOT EXISTS (SELECT 1 FROM outbox AS older
                                   WHERE older.lane = outbox.lane
                                     AND older.seq < outbox.seq))
RETURNING delivery_seq
"""


def lease_new(
    conn: sqlite3.Connection, seqs: Sequence[int], owner: str, now: float, lease_seconds: float
) -> list[int]:
    """Lease rows inserted in this transaction for ``owner``, as a claim would, and count their
    first attempt; the rows that wait behind their lane are left for a claim. (For the accept
    transaction: it hands a new row to this process's worker without a claim transaction.)"""
    marks = ",".join("?" * len(seqs))
    leased = [
        r[0]
        for r in conn.execute(
            _LEASE_NEW.format(marks=marks),
            [now + lease_seconds, owner, *seqs],
        )
    ]
    if leased:
        conn.execute(
            f"UPDATE deliveries SET attempts = 1 WHERE seq IN ({','.join('?' * len(leased))})",
            leased,
        )
    return leased


# ``attempt`` is the attempt's running number for its delivery, across redrives and replays
# (the retry budget, ``deliveries.attempts``, starts again at each).
_RECORD_ATTEMPT = """
INSERT INTO attempts (delivery_seq, attempt, started_at, duration_ms, outcome, status_code,
                      error, response)
VALUES (:seq, (SELECT coalesce(max(attempt), 0) + 1 FROM attempts WHERE delivery_seq = :seq),
        :started_at, :duration_ms, :outcome, :status_code, :error, :response)
"""


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the worker reports it."""

    seq: int
    owner: str
    outcome: str  # delivered | retry | dead
    started_at: float
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    response: str | None = None  # the start of the target's answer, when a handler reported it
    next_attempt_at: float = 0.0  # for retry
    dead_letter_id: str = ""  # for dead
    strict: bool = False  # for dead: park the row so its lane waits for a redrive
    waited: bool = False  # for retry: a wait, not a failure (errors.Waiting): attempt given back


def record_outcome(o: Outcome, now: float) -> Any:
    """An op that records an attempt's outcome, counted in its instance's health record (a
    wait is not); a lost lease leaves the row to its new owner. A wait gives its attempt back
    to the retry budget, as a release does."""

    def op(conn: sqlite3.Connection) -> bool:
        conn.execute(
            _RECORD_ATTEMPT,
            {
                "seq": o.seq,
                "started_at": o.started_at,
                "duration_ms": o.duration_ms,
                "outcome": o.outcome,
                "status_code": o.status_code,
                "error": o.error,
                "response": o.response,
            },
        )
        if not o.waited:
            health.record_in(conn, o.seq, o.outcome, o.error, now)
        if o.outcome == "delivered":
            # Delivered is the truth even if the lease expired meanwhile.
            conn.execute("DELETE FROM outbox WHERE delivery_seq = ?", (o.seq,))
            conn.execute(
                "UPDATE deliveries SET state = 'delivered', delivered_at = ?, last_error = NULL "
                "WHERE seq = ?",
                (now, o.seq),
            )
            # A worker whose lease expired may have dead-lettered it meanwhile: that is moot now
            # (and a redrive must not deliver it again).
            conn.execute(
                "UPDATE dead_letters SET redriven_at = ? "
                "WHERE delivery_seq = ? AND redriven_at IS NULL",
                (now, o.seq),
            )
            return True
        ours = "delivery_seq = ? AND lease_owner = ?"
        if o.outcome == "retry":
            cur = conn.execute(
                f"UPDATE outbox SET lease_until = NULL, lease_owner = NULL, available_at = ? "
                f"WHERE {ours}",
                (o.next_attempt_at, o.seq, o.owner),
            )
        elif o.strict:
            cur = conn.execute(
                f"UPDATE outbox SET lease_until = NULL, lease_owner = NULL, parked = 1 "
                f"WHERE {ours}",
                (o.seq, o.owner),
            )
        else:
            cur = conn.execute(f"DELETE FROM outbox WHERE {ours}", (o.seq, o.owner))
        if cur.rowcount == 0:
            return False
        given_back = 1 if o.waited else 0
        conn.execute(
            "UPDATE deliveries SET last_error = ?, attempts = attempts - ? WHERE seq = ?",
            (o.error, given_back, o.seq),
        )
        if o.outcome == "dead":
            conn.execute("UPDATE deliveries SET state = 'dead' WHERE seq = ?", (o.seq,))
            conn.execute(
                "INSERT INTO dead_letters (id, delivery_seq, plugin_id, instance_id, attempts, "
                "last_error, created_at) SELECT ?, seq, plugin_id, instance_id, attempts, ?, ? "
                "FROM deliveries WHERE seq = ?",
                (o.dead_letter_id, o.error or "failed", now, o.seq),
            )
        return True

    return op


def record_outcome_and_peek(o: Outcome, lane: str | None, now: float) -> Any:
    """:func:`record_outcome`, answering whether there may now be work to claim because of it:
    the next row of the lane it freed, or the row itself once its retry is due."""
    record = record_outcome(o, now)

    def op(conn: sqlite3.Connection) -> bool:
        ours: bool = record(conn)
        if o.outcome == "retry":
            return ours
        if lane is None or (o.outcome == "dead" and o.strict):  # a parked head holds its lane
            return False
        more = conn.execute("SELECT 1 FROM outbox WHERE lane = ? LIMIT 1", (lane,)).fetchone()
        return more is not None

    return op


def release(owner: str, seqs: Sequence[int] | None = None) -> Any:
    """An op that gives back leases ``owner`` took but did not attempt (all, or ``seqs``).

    Their claim counted an attempt that was never made: it is taken back.
    """

    def op(conn: sqlite3.Connection) -> int:
        where = "lease_owner = ?"
        params: list[Any] = [owner]
        if seqs is not None:
            where += f" AND delivery_seq IN ({','.join('?' * len(seqs))})"
            params.extend(seqs)
        released = [
            r[0]
            for r in conn.execute(
                f"UPDATE outbox SET lease_until = NULL, lease_owner = NULL WHERE {where} "
                "RETURNING delivery_seq",
                params,
            )
        ]
        if released:
            conn.execute(
                f"UPDATE deliveries SET attempts = attempts - 1 "
                f"WHERE attempts > 0 AND seq IN ({','.join('?' * len(released))})",
                released,
            )
        return len(released)

    return op


_LATER = {"sqlite": "max", "postgresql": "greatest"}  # the larger of two values


def next_due(db: Database) -> float | None:
    """When the earliest lane head (or lane-less row) is next claimable, if any is waiting."""
    row = db.read_one(
        f"SELECT min({_LATER[dialect(db)]}(o.available_at, coalesce(o.lease_until, 0))) "
        f"FROM outbox AS o WHERE o.parked = 0 AND (o.lane IS NULL OR {IS_LANE_HEAD})"
    )
    return float(row[0]) if row is not None and row[0] is not None else None

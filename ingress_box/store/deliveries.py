"""Deliveries and their outbox: accept, claim in lane order, record outcomes, list.

A delivery is accepted together with its outbox row (one op, so one transaction). The worker
claims rows with a lease; only the head of each conversation lane is claimable, and only while
no other row of that lane is leased. Recording an outcome checks that the lease is still ours.

Record types: :class:`NewDelivery` is what the ingress stores (its headers already redacted and
serialised, no attempt yet); a claim hands out the handler's own
:class:`~ingress_box.event.Event` plus the row's ``seq`` (:class:`Claimed`), so the worker makes
no copy of it; listings return :class:`Delivery` (with :class:`DeliveryDetail` and
:class:`Attempt` for one delivery), each with the ``to_json`` that the API and the CLI answer.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound
from ..event import Event
from .db import Database
from .pages import Page, decode_cursor, page_of

STATES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class NewDelivery:
    id: str
    plugin_id: str
    instance_id: str
    route: str
    provider_delivery_id: str
    conversation: str | None
    method: str
    subpath: str
    content_type: str | None
    headers: str  # JSON, redacted
    body: bytes
    received_at: float


@dataclass(frozen=True)
class Claimed:
    """A leased outbox row: the event its handler gets, and the row's key to record the outcome."""

    seq: int
    event: Event


# Whether outbox row ``o`` is the head (oldest row) of its lane.
IS_LANE_HEAD = (
    "o.delivery_seq = (SELECT min(h.delivery_seq) FROM outbox AS h WHERE h.lane = o.lane)"
)
# Events of one conversation of one instance share a lane; others are independent (NULL).
LANE_SQL = (
    "CASE WHEN conversation IS NULL THEN NULL "
    "ELSE plugin_id || char(0) || instance_id || char(0) || conversation END"
)


# -- ingress ---------------------------------------------------------------------------------

_INSERT_DELIVERIES = """
INSERT OR IGNORE INTO deliveries (id, plugin_id, instance_id, route, provider_delivery_id,
    conversation, method, subpath, content_type, headers, body, received_at)
VALUES {rows} RETURNING seq, id
"""
_INSERT_OUTBOX = f"""
INSERT INTO outbox (delivery_seq, lane, available_at)
SELECT seq, {LANE_SQL}, received_at FROM deliveries WHERE seq IN ({{seqs}})
"""
_CHUNK = 500  # rows per statement: 12 parameters each, far below SQLite's variable limit


def _rows(count: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * count)


def accept_many(conn: sqlite3.Connection, items: Sequence[NewDelivery]) -> list[bool]:
    """Store deliveries and their outbox rows; for each, False when its dedup key was there.

    One multi-row ``INSERT OR IGNORE ... RETURNING`` per chunk: the unique index decides, and
    a key repeated inside one batch is new only the first time.
    """
    results: list[bool] = []
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        params = [
            value
            for d in chunk
            for value in (
                d.id,
                d.plugin_id,
                d.instance_id,
                d.route,
                d.provider_delivery_id,
                d.conversation,
                d.method,
                d.subpath,
                d.content_type,
                d.headers,
                d.body,
                d.received_at,
            )
        ]
        inserted = {
            row[1]: row[0]
            for row in conn.execute(_INSERT_DELIVERIES.format(rows=_rows(len(chunk), 12)), params)
        }
        if inserted:
            conn.execute(
                _INSERT_OUTBOX.format(seqs=",".join("?" * len(inserted))), list(inserted.values())
            )
        for d in chunk:
            results.append(inserted.pop(d.id, None) is not None)  # popped: a repeat is a dup
    return results


async def seen(db: Database, plugin_id: str, instance_id: str, provider_delivery_id: str) -> bool:
    """Whether this dedup key is stored: a read, for answering a duplicate without a write."""
    row = await db.aread_one(
        """SELECT 1 FROM deliveries
        WHERE plugin_id = ? AND instance_id = ? AND provider_delivery_id = ?""",
        (plugin_id, instance_id, provider_delivery_id),
    )
    return row is not None


def accept(conn: sqlite3.Connection, d: NewDelivery) -> bool:
    """Store one delivery and its outbox row; False when the dedup key is already there."""
    return accept_many(conn, [d])[0]


# -- the worker's claims and outcomes --------------------------------------------------------

_CLAIM = f"""
UPDATE outbox SET lease_until = :until, lease_owner = :owner
WHERE delivery_seq IN (
    SELECT o.delivery_seq FROM outbox AS o
    WHERE o.parked = 0
      AND o.available_at <= :now
      AND (o.lease_until IS NULL OR o.lease_until < :now)
      AND (o.lane IS NULL OR (
            {IS_LANE_HEAD}
            AND NOT EXISTS (SELECT 1 FROM outbox AS l
                            WHERE l.lane = o.lane AND l.lease_until >= :now
                              AND l.delivery_seq != o.delivery_seq)))
    ORDER BY o.delivery_seq
    LIMIT :limit)
RETURNING delivery_seq
"""
_CLAIMED_ROWS = """
SELECT seq, id, plugin_id, instance_id, route, provider_delivery_id, conversation, method,
       subpath, content_type, headers, body, attempts, received_at
FROM deliveries WHERE seq IN ({marks}) ORDER BY seq
"""


def claim(owner: str, now: float, lease_seconds: float, limit: int) -> Any:
    """An op that leases up to ``limit`` claimable rows and counts their attempt."""

    def op(conn: sqlite3.Connection) -> list[Claimed]:
        seqs = [
            r[0]
            for r in conn.execute(
                _CLAIM, {"until": now + lease_seconds, "owner": owner, "now": now, "limit": limit}
            ).fetchall()
        ]
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        conn.execute(f"UPDATE deliveries SET attempts = attempts + 1 WHERE seq IN ({marks})", seqs)
        rows = conn.execute(_CLAIMED_ROWS.format(marks=marks), seqs).fetchall()
        return [
            Claimed(
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


def _record_attempt(
    conn: sqlite3.Connection,
    seq: int,
    attempt: int,
    started_at: float,
    duration_ms: float,
    outcome: str,
    status_code: int | None,
    error: str | None,
) -> None:
    conn.execute(
        "INSERT INTO attempts (delivery_seq, attempt, started_at, duration_ms, outcome, "
        "status_code, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, attempt, started_at, duration_ms, outcome, status_code, error),
    )


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the worker reports it."""

    seq: int
    owner: str
    attempt: int
    outcome: str  # delivered | retry | dead
    started_at: float
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: float = 0.0  # for retry
    dead_letter_id: str = ""  # for dead
    strict: bool = False  # for dead: park the row so its lane waits for a redrive


def record_outcome(o: Outcome, now: float) -> Any:
    """An op that records an attempt's outcome; a lost lease leaves the row to its new owner."""

    def op(conn: sqlite3.Connection) -> bool:
        _record_attempt(
            conn, o.seq, o.attempt, o.started_at, o.duration_ms, o.outcome, o.status_code, o.error
        )
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
        conn.execute("UPDATE deliveries SET last_error = ? WHERE seq = ?", (o.error, o.seq))
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
                f"UPDATE deliveries SET attempts = max(attempts - 1, 0) "
                f"WHERE seq IN ({','.join('?' * len(released))})",
                released,
            )
        return len(released)

    return op


def next_due(db: Database) -> float | None:
    """When the earliest lane head (or lane-less row) is next claimable, if any is waiting."""
    row = db.read_one(
        "SELECT min(max(o.available_at, coalesce(o.lease_until, 0))) FROM outbox AS o "
        f"WHERE o.parked = 0 AND (o.lane IS NULL OR {IS_LANE_HEAD})"
    )
    return float(row[0]) if row is not None and row[0] is not None else None


# -- reading deliveries ----------------------------------------------------------------------

_ITEM = """
SELECT d.seq, d.id, d.plugin_id, d.instance_id, d.route, d.provider_delivery_id,
       d.conversation, d.state, d.attempts, d.received_at, d.delivered_at, d.last_error,
       d.note, d.content_type, length(d.body) AS size, o.available_at, o.lease_until, o.parked
FROM deliveries AS d LEFT JOIN outbox AS o ON o.delivery_seq = d.seq
"""


@dataclass(frozen=True)
class Delivery:
    """One delivery as listed; the outbox fields are None when it has no outbox row."""

    seq: int
    id: str
    plugin_id: str
    instance_id: str
    route: str
    provider_delivery_id: str
    conversation: str | None
    state: str
    attempts: int
    received_at: float
    delivered_at: float | None
    last_error: str | None
    note: str | None
    content_type: str | None
    size: int | None  # None once the payload is pruned
    next_attempt_at: float | None
    leased: bool
    parked: bool

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "route": self.route,
            "provider_delivery_id": self.provider_delivery_id,
            "conversation": self.conversation,
            "state": self.state,
            "attempts": self.attempts,
            "received_at": self.received_at,
            "delivered_at": self.delivered_at,
            "last_error": self.last_error,
            "note": self.note,
            "content_type": self.content_type,
            "size": self.size,
        }
        # Where it stands in the outbox, for what is still waiting (a parked head is dead).
        if self.state == "pending" or self.parked:
            data["next_attempt_at"] = self.next_attempt_at
            data["leased"] = self.leased
            data["parked"] = self.parked
        return data


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        seq=row["seq"],
        id=row["id"],
        plugin_id=row["plugin_id"],
        instance_id=row["instance_id"],
        route=row["route"],
        provider_delivery_id=row["provider_delivery_id"],
        conversation=row["conversation"],
        state=row["state"],
        attempts=row["attempts"],
        received_at=row["received_at"],
        delivered_at=row["delivered_at"],
        last_error=row["last_error"],
        note=row["note"],
        content_type=row["content_type"],
        size=row["size"],
        next_attempt_at=row["available_at"],
        leased=row["lease_until"] is not None,
        parked=bool(row["parked"]),
    )


@dataclass(frozen=True)
class Attempt:
    attempt: int
    started_at: float
    duration_ms: float
    outcome: str  # delivered | retry | dead
    status_code: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "error": self.error,
        }


@dataclass(frozen=True)
class DeliveryDetail:
    """One delivery with its stored headers, its body (None once pruned) and its attempts."""

    delivery: Delivery
    headers: dict[str, str]
    body: bytes | None
    attempts: list[Attempt]

    def to_json(self) -> dict[str, Any]:
        data = self.delivery.to_json()
        data["headers"] = self.headers
        data["body_pruned"] = self.body is None
        if self.body is not None:
            try:
                data["body"] = self.body.decode("utf-8")
            except UnicodeDecodeError:
                data["body_base64"] = base64.b64encode(self.body).decode()
        data["attempt_log"] = [a.to_json() for a in self.attempts]
        return data


def _list_query(
    plugin_id: str | None,
    instance_id: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("d.plugin_id", plugin_id),
        ("d.instance_id", instance_id),
        ("d.state", state),
    ):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if cursor:
        where.append("d.seq < ?")
        params.append(decode_cursor(cursor, (int,))[0])
    sql = _ITEM + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY d.seq DESC LIMIT ?"
    params.append(limit + 1)
    return sql, params


async def alist_page(
    db: Database,
    plugin_id: str | None,
    instance_id: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
) -> Page[Delivery]:
    rows = await db.aread(*_list_query(plugin_id, instance_id, state, cursor, limit))
    return page_of([_delivery(r) for r in rows], limit, lambda d: [d.seq])


_ATTEMPTS = (
    "SELECT attempt, started_at, duration_ms, outcome, status_code, error "
    "FROM attempts WHERE delivery_seq = ? ORDER BY id"
)


async def aitems(db: Database, ids: Sequence[str]) -> list[Delivery]:
    """These deliveries, newest first, in one query."""
    if not ids:
        return []
    rows = await db.aread(
        _ITEM + f" WHERE d.id IN ({','.join('?' * len(ids))}) ORDER BY d.seq DESC", list(ids)
    )
    return [_delivery(r) for r in rows]


async def aget(db: Database, delivery_id: str) -> DeliveryDetail:
    rows = await db.aread(_ITEM + " WHERE d.id = ?", (delivery_id,))
    if not rows:
        raise NotFound(f"no delivery {delivery_id}")
    delivery = _delivery(rows[0])
    attempts = await db.aread(_ATTEMPTS, (delivery.seq,))
    body_row = await db.aread_one(
        "SELECT headers, body FROM deliveries WHERE seq = ?", (delivery.seq,)
    )
    assert body_row is not None
    body = body_row["body"]
    return DeliveryDetail(
        delivery=delivery,
        headers=json.loads(body_row["headers"]),
        body=None if body is None else bytes(body),
        attempts=[Attempt(**dict(a)) for a in attempts],
    )

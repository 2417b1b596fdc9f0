"""Deliveries: accept one with its outbox row (one op, so one transaction), and read them.

The worker's side of the outbox (claims in lane order, outcomes, releases) is
:mod:`~ingress_box.store.outbox`.

Record types: :class:`NewDelivery` is what the ingress stores (its headers already redacted and
serialised, no attempt yet; a claim hands out the handler's own :class:`~ingress_box.event.Event`,
see :class:`~ingress_box.store.outbox.Claimed`); listings return :class:`Delivery` (with
:class:`DeliveryDetail` and :class:`Attempt` for one delivery), each with the ``to_json`` that
the API and the CLI answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound
from ..event import Event
from ..values import is_utf8
from .db import Database
from .outbox import LANE_SQL
from .pages import MAX_LIMIT, Page, decode_cursor, page_of
from .sql import Conn, Dialect, Row, dialect

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
    event_type: str | None = None

    def event(self) -> Event:
        """The record its handler gets for its first attempt, as a claim would read it back."""
        return Event(
            id=self.id,
            plugin=self.plugin_id,
            instance=self.instance_id,
            route=self.route,
            provider_delivery_id=self.provider_delivery_id,
            conversation=self.conversation,
            method=self.method,
            subpath=self.subpath,
            content_type=self.content_type,
            headers=json.loads(self.headers),
            body=self.body,
            attempt=1,
            received_at=self.received_at,
        )


# -- ingress ---------------------------------------------------------------------------------

_COLUMNS = """deliveries (id, plugin_id, instance_id, route, provider_delivery_id,
    conversation, method, subpath, content_type, headers, body, received_at, event_type,
    searchable)"""
_INSERT_DELIVERIES = {
    "sqlite": f"INSERT OR IGNORE INTO {_COLUMNS} VALUES {{rows}} RETURNING seq, id",
    "postgresql": f"INSERT INTO {_COLUMNS} VALUES {{rows}} "
    "ON CONFLICT DO NOTHING RETURNING seq, id",
}
_INSERT_OUTBOX = {
    engine: f"""
INSERT INTO outbox (delivery_seq, lane, available_at)
SELECT seq, {lane}, received_at FROM deliveries WHERE seq IN ({{seqs}}) ORDER BY seq
"""
    for engine, lane in LANE_SQL.items()
}
_CHUNK = 500  # rows per statement: 14 parameters each, far below SQLite's variable limit
_WIDTH = 14


def _rows(count: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * count)


def accept_many(conn: Conn, items: Sequence[NewDelivery]) -> list[int | None]:
    """Store deliveries and their outbox rows; for each, its new ``seq``, or None when its
    dedup key was there.

    One multi-row ``INSERT OR IGNORE ... RETURNING`` per chunk: the unique index decides, and
    a key repeated inside one batch is new only the first time.
    """
    results: list[int | None] = []
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
                d.event_type,
                int(is_utf8(d.body)),  # 1: for the indexer (store/search.py) to add
            )
        ]
        inserted = {
            row[1]: row[0]
            for row in conn.execute(
                _INSERT_DELIVERIES[dialect(conn)].format(rows=_rows(len(chunk), _WIDTH)), params
            )
        }
        if inserted:
            conn.execute(
                _INSERT_OUTBOX[dialect(conn)].format(seqs=",".join("?" * len(inserted))),
                list(inserted.values()),
            )
        for d in chunk:
            results.append(inserted.pop(d.id, None))  # popped: a repeat is a duplicate
    return results


async def seen(db: Database, plugin_id: str, instance_id: str, provider_delivery_id: str) -> bool:
    """Whether this dedup key is stored: a read, for answering a duplicate without a write."""
    row = await db.aread_one(
        """SELECT 1 FROM deliveries
        WHERE plugin_id = ? AND instance_id = ? AND provider_delivery_id = ?""",
        (plugin_id, instance_id, provider_delivery_id),
    )
    return row is not None


def accept(conn: Conn, d: NewDelivery) -> bool:
    """Store one delivery and its outbox row; False when the dedup key is already there."""
    return accept_many(conn, [d])[0] is not None


# -- reading deliveries ----------------------------------------------------------------------

_ITEM = """
SELECT d.seq, d.id, d.plugin_id, d.instance_id, d.route, d.provider_delivery_id,
       d.conversation, d.state, d.attempts, d.received_at, d.delivered_at, d.last_error,
       d.note, d.content_type, length(d.body) AS size, d.event_type, o.available_at,
       o.lease_until, o.parked
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
    event_type: str | None  # where the plugin knows one
    next_attempt_at: float | None
    leased: bool
    parked: bool

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "route": self.route,
            "event_type": self.event_type,
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


def _delivery(row: Row) -> Delivery:
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
        event_type=row["event_type"],
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
    response: str | None  # the start of the target's answer

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "error": self.error,
            "response": self.response,
        }


@dataclass(frozen=True)
class DeliveryDetail:
    """One delivery with its stored headers, its body (None once pruned) and its attempts."""

    delivery: Delivery
    method: str
    subpath: str
    headers: dict[str, str]
    body: bytes | None
    attempts: list[Attempt]

    def event(self, attempt: int) -> Event:
        """The record its handler gets for attempt number ``attempt`` of the retry budget."""
        d = self.delivery
        return Event(
            id=d.id,
            plugin=d.plugin_id,
            instance=d.instance_id,
            route=d.route,
            provider_delivery_id=d.provider_delivery_id,
            conversation=d.conversation,
            method=self.method,
            subpath=self.subpath,
            content_type=d.content_type,
            headers=self.headers,
            body=self.body or b"",
            attempt=attempt,
            received_at=d.received_at,
        )

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


@dataclass(frozen=True)
class Filters:
    """Which deliveries a listing or an export shows; None is "any". ``since`` and ``until``
    bound ``received_at`` (unix seconds, ``until`` exclusive); ``search`` is text the body must
    contain, as a phrase (see :func:`phrase`)."""

    plugin_id: str | None = None
    instance_id: str | None = None
    state: str | None = None
    event_type: str | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None


def phrase(text: str) -> str:
    """``text`` as one FTS5 phrase: its words in this order, whatever they spell (``NEAR(``,
    ``*``, ``OR`` and quotes are words or nothing, never query syntax)."""
    return '"' + text.replace('"', '""') + '"'


# The rows of the full-text index that hold the phrase: a subquery the listing filters on.
# PostgreSQL's phraseto_tsquery takes the text as it is (it has no syntax to escape): its
# words, lower-cased, each followed by the next. Its parser cuts words a little differently
# from FTS5's: it keeps diacritics ("u" does not find "ü"), and an email, a URL or a decimal
# number is one word ("1.5" is found by "1.5", not by "1").
_MATCHING = {
    "sqlite": "d.seq IN (SELECT rowid FROM deliveries_search WHERE deliveries_search MATCH ?)",
    "postgresql": "d.seq IN (SELECT seq FROM deliveries_search "
    "WHERE words @@ phraseto_tsquery('simple', ?))",
}


def _list_query(
    engine: Dialect, filters: Filters, cursor: str | None, limit: int
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    search = filters.search
    if search is not None and engine == "sqlite":
        search = phrase(search)
    for condition, value in (
        ("d.plugin_id = ?", filters.plugin_id),
        ("d.instance_id = ?", filters.instance_id),
        ("d.state = ?", filters.state),
        ("d.event_type = ?", filters.event_type),
        ("d.received_at >= ?", filters.since),
        ("d.received_at < ?", filters.until),
        (_MATCHING[engine], search),
    ):
        if value is not None and value != "":
            where.append(condition)
            params.append(value)
    if cursor:
        where.append("d.seq < ?")
        params.append(decode_cursor(cursor, (int,))[0])
    sql = _ITEM + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY d.seq DESC LIMIT ?"
    params.append(limit + 1)
    return sql, params


async def alist_page(
    db: Database, filters: Filters, cursor: str | None, limit: int
) -> Page[Delivery]:
    rows = await db.aread(*_list_query(dialect(db), filters, cursor, limit))
    return page_of([_delivery(r) for r in rows], limit, lambda d: [d.seq])


async def aevery(db: Database, filters: Filters, most: int) -> AsyncIterator[Delivery]:
    """The deliveries ``filters`` select, newest first, at most ``most`` of them, read a page
    at a time (so an export never holds them all, nor one read transaction for long)."""
    cursor: str | None = None
    left = most
    while left > 0:
        page = await alist_page(db, filters, cursor, min(left, MAX_LIMIT))
        for delivery in page.items:
            yield delivery
        left -= len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return


_ATTEMPTS = (
    "SELECT attempt, started_at, duration_ms, outcome, status_code, error, response "
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
        "SELECT method, subpath, headers, body FROM deliveries WHERE seq = ?", (delivery.seq,)
    )
    assert body_row is not None
    body = body_row["body"]
    return DeliveryDetail(
        delivery=delivery,
        method=body_row["method"],
        subpath=body_row["subpath"],
        headers=json.loads(body_row["headers"]),
        body=None if body is None else bytes(body),
        attempts=[Attempt(**dict(a)) for a in attempts],
    )

"""Quarantined requests: refused for their signature or timestamp, kept to be admitted later.

A row holds what admission needs to verify the request again (raw body, headers minus the
credentials that are not the verification input, method, URL) and what the operator reads
(route, status, reason, arrival time). The database keeps it bounded: :func:`keep` inserts and
trims in one op, so at most ``kept`` rows per instance and ``max_bytes`` of rows in all remain,
the oldest dropped first, and a row for an instance deleted meanwhile is never inserted (a
trigger in ``schema.sql`` drops an instance's rows with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound
from .db import Database
from .pages import Page, decode_cursor, page_of
from .sql import Conn, Row


@dataclass(frozen=True)
class NewRejection:
    plugin_id: str
    instance_id: str
    route: str
    method: str
    subpath: str  # what followed the route, query redacted
    url: str  # the URL the provider called, query redacted
    headers: str  # JSON
    body: bytes
    received_at: float
    status: int
    reason: str

    @property
    def size(self) -> int:
        """What the row costs against the byte cap: its body, headers and URL."""
        return len(self.body) + len(self.headers.encode()) + len(self.url.encode())


@dataclass(frozen=True)
class Listed:
    """A kept request as lists show it (no body: a page of them stays small)."""

    id: int
    plugin_id: str
    instance_id: str
    route: str
    received_at: float
    status: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "route": self.route,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Rejection(Listed):
    """A kept request whole, as admission needs it."""

    method: str
    subpath: str
    url: str
    headers: dict[str, str]
    body: bytes


_INSERT = """
INSERT INTO rejections (plugin_id, instance_id, route, method, subpath, url, headers, body,
                        received_at, status, reason, size)
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE EXISTS (SELECT 1 FROM instances WHERE plugin_id = ? AND instance_id = ?)
RETURNING id
"""
_TRIM_INSTANCE = """
DELETE FROM rejections WHERE plugin_id = ? AND instance_id = ? AND id <= (
    SELECT id FROM rejections WHERE plugin_id = ? AND instance_id = ?
    ORDER BY id DESC LIMIT 1 OFFSET ?)
"""
# The newest rows whose sizes add up to at most the cap stay; every older one goes.
_TRIM_BYTES = """
DELETE FROM rejections WHERE id <= (
    SELECT id FROM (SELECT id, sum(size) OVER (ORDER BY id DESC) AS total FROM rejections) AS r
    WHERE total > ? ORDER BY id DESC LIMIT 1)
"""


def keep(new: NewRejection, kept: int, max_bytes: int) -> Any:
    """An op: store ``new``, then drop the oldest rows past the caps. The new row's id, or
    None when it was not stored (its instance is gone, or it alone is over the byte cap)."""

    def op(conn: Conn) -> int | None:
        if new.size > max_bytes:
            return None
        row = conn.execute(
            _INSERT,
            (
                new.plugin_id,
                new.instance_id,
                new.route,
                new.method,
                new.subpath,
                new.url,
                new.headers,
                new.body,
                new.received_at,
                new.status,
                new.reason,
                new.size,
                new.plugin_id,
                new.instance_id,
            ),
        ).fetchone()
        if row is None:
            return None
        key = (new.plugin_id, new.instance_id)
        conn.execute(_TRIM_INSTANCE, (*key, *key, kept))
        conn.execute(_TRIM_BYTES, (max_bytes,))
        rejection_id: int = row[0]
        return rejection_id

    return op


def remove(plugin_id: str, instance_id: str, rejection_id: int) -> Any:
    """An op: drop one kept request (once admitted)."""

    def op(conn: Conn) -> None:
        conn.execute(
            "DELETE FROM rejections WHERE id = ? AND plugin_id = ? AND instance_id = ?",
            (rejection_id, plugin_id, instance_id),
        )

    return op


_COLUMNS = (
    "id, plugin_id, instance_id, route, method, subpath, url, headers, body, received_at, "
    "status, reason"
)


def _from_row(row: Row) -> Rejection:
    fields = dict(row)
    fields["headers"] = json.loads(fields["headers"])
    return Rejection(**fields)


_LISTED = "id, plugin_id, instance_id, route, received_at, status, reason"


async def alist_page(
    db: Database, plugin_id: str, instance_id: str, cursor: str | None, limit: int
) -> Page[Listed]:
    """An instance's kept requests, newest first."""
    where, params = "plugin_id = ? AND instance_id = ?", [plugin_id, instance_id]
    if cursor:
        where += " AND id < ?"
        params.append(decode_cursor(cursor, (int,))[0])
    rows = await db.aread(
        f"SELECT {_LISTED} FROM rejections WHERE {where} ORDER BY id DESC LIMIT ?",
        [*params, limit + 1],
    )
    return page_of([Listed(**dict(r)) for r in rows], limit, lambda r: [r.id])


async def anewest(db: Database, limit: int) -> list[Listed]:
    """The newest kept requests over all instances."""
    rows = await db.aread(f"SELECT {_LISTED} FROM rejections ORDER BY id DESC LIMIT ?", (limit,))
    return [Listed(**dict(r)) for r in rows]


async def aget(db: Database, plugin_id: str, instance_id: str, rejection_id: int) -> Rejection:
    row = await db.aread_one(
        f"SELECT {_COLUMNS} FROM rejections WHERE id = ? AND plugin_id = ? AND instance_id = ?",
        (rejection_id, plugin_id, instance_id),
    )
    if row is None:
        raise NotFound(f"no kept rejection {rejection_id} of {plugin_id}/{instance_id}")
    return _from_row(row)

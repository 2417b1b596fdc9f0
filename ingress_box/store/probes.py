"""Test events in the store: one is an ordinary delivery with its outbox row; its first attempt
is what the operator waits for."""

from __future__ import annotations

from typing import Any

from .db import Database
from .deliveries import Attempt, NewDelivery, accept
from .sql import Conn, Row

_FIRST_ATTEMPT = """
SELECT a.attempt, a.started_at, a.duration_ms, a.outcome, a.status_code, a.error, a.response
FROM deliveries AS d JOIN attempts AS a ON a.delivery_seq = d.seq
WHERE d.id = ? ORDER BY a.id LIMIT 1
"""


def insert(event: NewDelivery) -> Any:
    """An op that stores the test event and its outbox row, like an accepted webhook."""

    def op(conn: Conn) -> None:
        accept(conn, event)  # its provider id is fresh: never a duplicate

    return op


def _attempt(row: Row | None) -> Attempt | None:
    return Attempt(**dict(row)) if row is not None else None


def first_attempt(db: Database, delivery_id: str) -> Attempt | None:
    return _attempt(db.read_one(_FIRST_ATTEMPT, (delivery_id,)))


async def afirst_attempt(db: Database, delivery_id: str) -> Attempt | None:
    return _attempt(await db.aread_one(_FIRST_ATTEMPT, (delivery_id,)))

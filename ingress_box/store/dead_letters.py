"""Dead letters: what failed for good, kept to be read, redriven or discarded.

Redrive is one op per batch: the delivery goes back to the outbox and its dead letter is
marked redriven in the same transaction, so a failed redrive leaves the row redrivable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound
from .db import Database
from .deliveries import LANE_SQL
from .pages import Page, decode_cursor, encode_cursor

MAX_REDRIVE_BATCH = 1000


@dataclass(frozen=True)
class Selection:
    """Which open dead letters an operation is about."""

    plugin_id: str | None = None
    instance_id: str | None = None
    ids: Sequence[str] | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["x.redriven_at IS NULL"], []
        if self.plugin_id:
            clauses.append("x.plugin_id = ?")
            params.append(self.plugin_id)
        if self.instance_id:
            clauses.append("x.instance_id = ?")
            params.append(self.instance_id)
        if self.ids is not None:
            clauses.append(f"x.id IN ({','.join('?' * len(self.ids))})")
            params.extend(self.ids)
        return " AND ".join(clauses), params


_ITEM = """
SELECT x.rowid AS pos, x.id, d.id AS delivery, x.plugin_id, x.instance_id, x.attempts,
       x.last_error, x.created_at, d.route, d.conversation, d.provider_delivery_id
FROM dead_letters AS x JOIN deliveries AS d ON d.seq = x.delivery_seq
"""


def _item(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "delivery": row["delivery"],
        "plugin": row["plugin_id"],
        "instance": row["instance_id"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "created_at": row["created_at"],
        "route": row["route"],
        "conversation": row["conversation"],
        "provider_delivery_id": row["provider_delivery_id"],
    }


async def alist_page(
    db: Database, selection: Selection, cursor: str | None, limit: int
) -> Page[dict[str, Any]]:
    where, params = selection.where()
    if cursor:
        where += " AND x.rowid > ?"
        params.append(decode_cursor(cursor, (int,))[0])
    rows = await db.aread(f"{_ITEM} WHERE {where} ORDER BY x.rowid LIMIT ?", [*params, limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page([_item(r) for r in rows], encode_cursor([rows[-1]["pos"]]) if more else None)


def redrive(selection: Selection, limit: int, now: float) -> Any:
    """An op: move up to ``limit`` open dead letters back to the outbox.

    Returns ``(redriven, remaining)``. The attempt budget starts again; ``webhook-id`` stays.
    """

    def op(conn: sqlite3.Connection) -> tuple[int, int]:
        where, params = selection.where()
        rows = conn.execute(
            f"SELECT x.id, d.seq, d.plugin_id, d.instance_id, d.conversation "
            f"FROM dead_letters AS x JOIN deliveries AS d ON d.seq = x.delivery_seq "
            f"WHERE {where} ORDER BY x.rowid LIMIT ?",
            [*params, limit],
        ).fetchall()
        for row in rows:
            conn.execute("UPDATE dead_letters SET redriven_at = ? WHERE id = ?", (now, row["id"]))
            conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0 WHERE seq = ?", (row["seq"],)
            )
            # A strict lane keeps its dead head parked in the outbox: un-park it.
            conn.execute(
                f"INSERT INTO outbox (delivery_seq, lane, available_at) "
                f"SELECT seq, {LANE_SQL}, ? FROM deliveries WHERE seq = ? "
                f"ON CONFLICT (delivery_seq) DO UPDATE SET parked = 0, "
                f"available_at = excluded.available_at, lease_until = NULL, lease_owner = NULL",
                (now, row["seq"]),
            )
        remaining = conn.execute(
            f"SELECT count(*) FROM dead_letters AS x WHERE {where}", params
        ).fetchone()[0]
        return len(rows), remaining

    return op


def discard(dead_letter_id: str) -> Any:
    """An op: drop one open dead letter; a strict lane it was blocking moves on."""

    def op(conn: sqlite3.Connection) -> None:
        row = conn.execute(
            "SELECT delivery_seq FROM dead_letters WHERE id = ? AND redriven_at IS NULL",
            (dead_letter_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no open dead letter {dead_letter_id}")
        conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))
        conn.execute(
            "DELETE FROM outbox WHERE delivery_seq = ? AND parked = 1", (row["delivery_seq"],)
        )

    return op

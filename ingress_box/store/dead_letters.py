"""Dead letters: what failed for good, kept to be read, redriven or discarded.

Redrive is one op per batch: the delivery goes back to the outbox and its dead letter is
marked redriven in the same transaction, so a failed redrive leaves the row redrivable.
:func:`aredrive` is the one way the API, the dashboard and the CLI redrive: up to a number of
dead letters (or every one) in batches of at most :data:`MAX_REDRIVE_BATCH`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound
from .db import Database
from .outbox import LANE_SQL
from .pages import Page, decode_cursor, page_of
from .sql import Conn, dialect

MAX_REDRIVE_BATCH = 1000  # dead letters redriven in one transaction


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


# A dead letter's place in the listing: SQLite's rowid, PostgreSQL's identity column.
_POS = {"sqlite": "x.rowid", "postgresql": "x.pos"}
_ITEM = """
SELECT {pos} AS pos, x.id, d.id AS delivery, x.plugin_id, x.instance_id, x.attempts,
       x.last_error, x.created_at, d.route, d.conversation, d.provider_delivery_id
FROM dead_letters AS x JOIN deliveries AS d ON d.seq = x.delivery_seq
"""


@dataclass(frozen=True)
class DeadLetter:
    pos: int  # its rowid: the listing's order and cursor
    id: str
    delivery: str  # the delivery's id
    plugin_id: str
    instance_id: str
    attempts: int
    last_error: str
    created_at: float
    route: str
    conversation: str | None
    provider_delivery_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "delivery": self.delivery,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "route": self.route,
            "conversation": self.conversation,
            "provider_delivery_id": self.provider_delivery_id,
        }


async def alist_page(
    db: Database, selection: Selection, cursor: str | None, limit: int
) -> Page[DeadLetter]:
    where, params = selection.where()
    pos = _POS[dialect(db)]
    if cursor:
        where += f" AND {pos} > ?"
        params.append(decode_cursor(cursor, (int,))[0])
    rows = await db.aread(
        f"{_ITEM.format(pos=pos)} WHERE {where} ORDER BY {pos} LIMIT ?", [*params, limit + 1]
    )
    return page_of([DeadLetter(**dict(r)) for r in rows], limit, lambda x: [x.pos])


def redrive(selection: Selection, limit: int, now: float) -> Any:
    """An op: move up to ``limit`` open dead letters back to the outbox.

    Returns ``(redriven, remaining)``. The attempt budget starts again; ``webhook-id`` stays.
    """

    def op(conn: Conn) -> tuple[int, int]:
        where, params = selection.where()
        rows = conn.execute(
            f"SELECT x.id, d.seq, d.plugin_id, d.instance_id, d.conversation "
            f"FROM dead_letters AS x JOIN deliveries AS d ON d.seq = x.delivery_seq "
            f"WHERE {where} ORDER BY {_POS[dialect(conn)]} LIMIT ?",
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
                f"SELECT seq, {LANE_SQL[dialect(conn)]}, ? FROM deliveries WHERE seq = ? "
                f"ON CONFLICT (delivery_seq) DO UPDATE SET parked = 0, "
                f"available_at = excluded.available_at, lease_until = NULL, lease_owner = NULL",
                (now, row["seq"]),
            )
        remaining = conn.execute(
            f"SELECT count(*) FROM dead_letters AS x WHERE {where}", params
        ).fetchone()[0]
        return len(rows), remaining

    return op


async def aredrive(
    db: Database,
    selection: Selection,
    limit: int | None,
    clock: Callable[[], float],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Redrive up to ``limit`` open dead letters (None: every one), a bounded batch at a time.

    Returns ``(redriven, remaining)``. Each batch is its own transaction, so the writer is never
    held for long; ``progress(done, total)`` hears of each batch that another one follows.
    """
    total, remaining = 0, 0
    while limit is None or total < limit:
        batch = MAX_REDRIVE_BATCH if limit is None else min(MAX_REDRIVE_BATCH, limit - total)
        redriven, remaining = await db.awrite(redrive(selection, batch, clock()))
        total += redriven
        if remaining == 0 or redriven == 0:
            break
        if progress is not None:
            # Another batch may follow: the end is what is done plus what is left to do.
            left = remaining if limit is None else min(remaining, limit - total)
            progress(total, total + left)
    return total, remaining


def discard(dead_letter_id: str) -> Any:
    """An op: drop one open dead letter; a strict lane it was blocking moves on."""

    def op(conn: Conn) -> None:
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

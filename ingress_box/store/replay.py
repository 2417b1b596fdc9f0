"""Replay: put delivered or dead deliveries back in the outbox, with the same ``webhook-id``.

A replayed delivery gets a new outbox row, so it joins the back of its conversation's lane (a
lane goes in the order its rows were queued). Its retry budget starts again, as a redrive's
does, while its attempt log goes on counting. An open dead letter of it is closed; a dead head
parked in a strict lane is un-parked where it stands, since that lane is waiting for it. A
delivery whose body was pruned cannot be replayed: the target would get an empty body.

:func:`areplay_range` is the one way the API, the dashboard and the CLI replay a time range: in
acceptance order, a bounded batch per transaction, so within a lane the replayed deliveries
keep their order, behind what was already waiting there (and events accepted between two
batches may come between them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import AlreadyPending, InvalidInput, NotFound, PayloadPruned
from .db import Database
from .outbox import LANE_SQL
from .sql import Conn, dialect

MAX_REPLAY_BATCH = 500  # deliveries replayed in one transaction
REPLAYABLE = ("delivered", "dead")

_REQUEUE = {
    engine: f"""
INSERT INTO outbox (delivery_seq, lane, available_at)
SELECT seq, {lane}, :now FROM deliveries WHERE seq = :seq
ON CONFLICT (delivery_seq) DO UPDATE SET parked = 0, available_at = excluded.available_at,
                                         lease_until = NULL, lease_owner = NULL
"""
    for engine, lane in LANE_SQL.items()
}


def _requeue(conn: Conn, seqs: Sequence[int], now: float) -> None:
    for seq in seqs:  # in the order given: that is the order their lanes get them in
        conn.execute("UPDATE deliveries SET state = 'pending', attempts = 0 WHERE seq = ?", (seq,))
        conn.execute(
            "UPDATE dead_letters SET redriven_at = ? "
            "WHERE delivery_seq = ? AND redriven_at IS NULL",
            (now, seq),
        )
        conn.execute(_REQUEUE[dialect(conn)], {"seq": seq, "now": now})


def replay(delivery_id: str, now: float) -> Any:
    """An op: replay one delivery. NotFound, AlreadyPending, or PayloadPruned otherwise."""

    def op(conn: Conn) -> None:
        row = conn.execute(
            "SELECT seq, state, body IS NULL AS pruned FROM deliveries WHERE id = ?",
            (delivery_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no delivery {delivery_id}")
        if row["state"] == "pending":
            raise AlreadyPending(f"delivery {delivery_id} is still pending: nothing to replay")
        if row["pruned"]:
            raise PayloadPruned(
                f"the body of delivery {delivery_id} was pruned after delivery "
                "(payload retention): it cannot be replayed"
            )
        _requeue(conn, [row["seq"]], now)

    return op


@dataclass(frozen=True)
class Range:
    """Which deliveries a range replay is about: received in ``[since, until)``, delivered or
    dead (or only ``state``), of one plugin or instance if given."""

    since: float
    until: float | None = None
    plugin_id: str | None = None
    instance_id: str | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in REPLAYABLE:
            raise InvalidInput(f"state must be one of {', '.join(REPLAYABLE)}")
        if self.until is not None and self.until <= self.since:
            raise InvalidInput("until must be later than since")

    def where(self, after: int) -> tuple[str, list[Any]]:
        states = [self.state] if self.state else list(REPLAYABLE)
        clauses = ["seq > ?", "received_at >= ?", f"state IN ({','.join('?' * len(states))})"]
        params: list[Any] = [after, self.since, *states]
        for clause, value in (
            ("received_at < ?", self.until),
            ("plugin_id = ?", self.plugin_id),
            ("instance_id = ?", self.instance_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " AND ".join(clauses), params


def replay_batch(selection: Range, after: int, limit: int, now: float) -> Any:
    """An op: replay up to ``limit`` deliveries of ``selection`` past seq ``after``, oldest
    first, skipping pruned ones; returns how many and the last seq looked at (None: none)."""

    def op(conn: Conn) -> tuple[int, int | None]:
        where, params = selection.where(after)
        rows = conn.execute(
            f"SELECT seq, body IS NULL AS pruned FROM deliveries WHERE {where} "
            "ORDER BY seq LIMIT ?",
            [*params, limit],
        ).fetchall()
        _requeue(conn, [r["seq"] for r in rows if not r["pruned"]], now)
        return sum(1 for r in rows if not r["pruned"]), rows[-1]["seq"] if rows else None

    return op


@dataclass(frozen=True)
class RangeResult:
    replayed: int
    remaining: int  # replayable deliveries of the range past the last one replayed
    pruned: int  # deliveries of the range that cannot be replayed: their body is gone

    def to_json(self) -> dict[str, int]:
        return {"replayed": self.replayed, "remaining": self.remaining, "pruned": self.pruned}


async def areplay_range(
    db: Database,
    selection: Range,
    limit: int | None,
    clock: Callable[[], float],
    progress: Callable[[int, int], None] | None = None,
) -> RangeResult:
    """Replay up to ``limit`` deliveries of ``selection`` (None: every one), a bounded batch
    per transaction. The batches walk the acceptance order, so each delivery is replayed once
    even if it is delivered again meanwhile. ``progress(done, total)`` hears of each batch."""
    expected = 0
    if progress is not None:  # counted once: a count per batch would scan the range again
        expected = await _count(db, "body IS NOT NULL", selection, 0)
        expected = expected if limit is None else min(expected, limit)
    total, after = 0, 0
    while limit is None or total < limit:
        batch = MAX_REPLAY_BATCH if limit is None else min(MAX_REPLAY_BATCH, limit - total)
        replayed, last = await db.awrite(replay_batch(selection, after, batch, clock()))
        if last is None:
            break
        total, after = total + replayed, last
        if progress is not None:
            progress(total, max(expected, total))
    return RangeResult(
        replayed=total,
        remaining=await _count(db, "body IS NOT NULL", selection, after),
        pruned=await _count(db, "body IS NULL", selection, 0),
    )


async def _count(db: Database, body: str, selection: Range, after: int) -> int:
    where, params = selection.where(after)
    row = await db.aread_one(f"SELECT count(*) FROM deliveries WHERE {body} AND {where}", params)
    return int(row[0]) if row is not None else 0

"""The state of the store at one moment, for ``ingress-box stats``: every figure from one
snapshot (a read transaction; on PostgreSQL a repeatable-read one).

The backlog's figures are :mod:`ingress_box.store.backlog`'s, the ones the dashboard and
``/metrics`` show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import dbfile
from .backlog import Backlog, backlog_in
from .db import Database

HOUR = 3600.0
DAY = 86_400.0
_ATTEMPT_OUTCOMES = ("delivered", "retry", "dead")

_STATES = "SELECT state, count(*) FROM deliveries GROUP BY state"
_RECEIVED = (
    "SELECT count(*) FILTER (WHERE received_at >= ?), count(*) FILTER (WHERE received_at >= ?) "
    "FROM deliveries"
)
_ATTEMPTS = "SELECT outcome, count(*) FROM attempts WHERE started_at >= ? GROUP BY outcome"
_REDRIVEN = "SELECT count(*) FROM dead_letters WHERE redriven_at IS NOT NULL"
_INSTANCES = "SELECT count(*), count(*) FILTER (WHERE enabled = 1) FROM instances"


@dataclass(frozen=True)
class Stats:
    """Plain numbers: ages in seconds, sizes in bytes."""

    states: dict[str, int]  # deliveries by state
    received_last_hour: int
    received_last_day: int
    backlog: Backlog
    attempts_last_hour: dict[str, int]  # by outcome
    dead_letters_redriven: int
    instances: int
    instances_enabled: int
    files: dbfile.Sizes

    def to_json(self) -> dict[str, Any]:
        b = self.backlog
        return {
            "deliveries": {
                "pending": self.states.get("pending", 0),
                "delivered": self.states.get("delivered", 0),
                "dead": self.states.get("dead", 0),
                "total": sum(self.states.values()),
            },
            "received": {"last_hour": self.received_last_hour, "last_day": self.received_last_day},
            "outbox": {
                "depth": b.depth,
                "waiting": b.waiting,
                "leased": b.leased,
                "parked": b.parked,
                "lanes": b.lanes,
                "oldest_pending_age_seconds": b.oldest_pending_age,
            },
            "attempts_last_hour": {k: self.attempts_last_hour.get(k, 0) for k in _ATTEMPT_OUTCOMES},
            "dead_letters": {"open": b.dead_open, "redriven": self.dead_letters_redriven},
            "instances": {"total": self.instances, "enabled": self.instances_enabled},
            "files": {
                "database_bytes": self.files.database_bytes,
                "wal_bytes": self.files.wal_bytes,
            },
        }


def stats(db: Database, now: float) -> Stats:
    with dbfile.snapshot(db) as conn:
        states = {r[0]: r[1] for r in conn.execute(_STATES)}
        hour, day = conn.execute(_RECEIVED, (now - HOUR, now - DAY)).fetchone()
        attempts = {r[0]: r[1] for r in conn.execute(_ATTEMPTS, (now - HOUR,))}
        redriven = conn.execute(_REDRIVEN).fetchone()[0]
        instances, enabled = conn.execute(_INSTANCES).fetchone()
        backlog = backlog_in(conn, now)
    return Stats(
        states=states,
        received_last_hour=hour or 0,
        received_last_day=day or 0,
        backlog=backlog,
        attempts_last_hour=attempts,
        dead_letters_redriven=redriven,
        instances=instances,
        instances_enabled=enabled,
        files=dbfile.sizes(db),
    )

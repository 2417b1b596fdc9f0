"""Deliveries received and attempts made, in the order they happened (``ingress-box tail``).

Read by delivery sequence number and attempt id, which only grow, so a poll picks up exactly
what was committed since the one before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .db import Database

POLL_SECONDS = 0.5
BATCH = 500

# Where to start: just before the first row at or after :t, else after the last row there is.
_START = """
SELECT (SELECT coalesce(min(seq) - 1, (SELECT coalesce(max(seq), 0) FROM deliveries))
        FROM deliveries WHERE received_at >= :t),
       (SELECT coalesce(min(id) - 1, (SELECT coalesce(max(id), 0) FROM attempts))
        FROM attempts WHERE started_at >= :t)
"""
_NEW_DELIVERIES = """
SELECT seq, id, plugin_id, instance_id, route, provider_delivery_id, conversation, received_at
FROM deliveries WHERE seq > ? ORDER BY seq LIMIT ?
"""
_NEW_ATTEMPTS = """
SELECT a.id AS pos, a.attempt, a.started_at, a.duration_ms, a.outcome, a.status_code, a.error,
       a.response, d.id, d.plugin_id, d.instance_id, d.route
FROM attempts AS a JOIN deliveries AS d ON d.seq = a.delivery_seq
WHERE a.id > ? ORDER BY a.id LIMIT ?
"""


@dataclass(frozen=True)
class Received:
    at: float
    id: str
    plugin_id: str
    instance_id: str
    route: str
    provider_delivery_id: str
    conversation: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "received",
            "at": self.at,
            "id": self.id,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "route": self.route,
            "provider_delivery_id": self.provider_delivery_id,
            "conversation": self.conversation,
        }


@dataclass(frozen=True)
class Attempted:
    at: float  # when the attempt ended
    id: str  # the delivery's id
    plugin_id: str
    instance_id: str
    route: str
    attempt: int
    outcome: str
    status_code: int | None
    error: str | None
    response: str | None  # the start of the target's answer
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "attempt",
            "at": self.at,
            "id": self.id,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "route": self.route,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "error": self.error,
            "response": self.response,
            "duration_ms": round(self.duration_ms, 1),
        }


def tail(
    db: Database, since: float, *, follow: bool = True, sleep: Callable[[float], None] = time.sleep
) -> Iterator[Received | Attempted]:
    """Deliveries received and attempts made from ``since`` (unix seconds) on, oldest first.

    Polls every :data:`POLL_SECONDS`; without ``follow`` it stops once it has caught up.
    """
    start = db.read_one(_START, {"t": since})
    assert start is not None  # scalar subqueries always answer one row
    seq, pos = int(start[0]), int(start[1])
    while True:
        received = db.read(_NEW_DELIVERIES, (seq, BATCH))
        attempts = db.read(_NEW_ATTEMPTS, (pos, BATCH))
        events: list[Received | Attempted] = [
            Received(
                at=r["received_at"],
                id=r["id"],
                plugin_id=r["plugin_id"],
                instance_id=r["instance_id"],
                route=r["route"],
                provider_delivery_id=r["provider_delivery_id"],
                conversation=r["conversation"],
            )
            for r in received
        ]
        events += [
            Attempted(
                at=r["started_at"] + r["duration_ms"] / 1000,
                id=r["id"],
                plugin_id=r["plugin_id"],
                instance_id=r["instance_id"],
                route=r["route"],
                attempt=r["attempt"],
                outcome=r["outcome"],
                status_code=r["status_code"],
                error=r["error"],
                response=r["response"],
                duration_ms=r["duration_ms"],
            )
            for r in attempts
        ]
        yield from sorted(events, key=lambda e: e.at)
        seq = received[-1]["seq"] if received else seq
        pos = attempts[-1]["pos"] if attempts else pos
        if len(received) < BATCH and len(attempts) < BATCH:
            if not follow:
                return
            sleep(POLL_SECONDS)

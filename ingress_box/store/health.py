"""What the store knows of each instance's health, and the alerts sent about it.

The ``instance_health`` row of an instance is kept by the outcome of every attempt, in the
outcome's own transaction (:func:`record_in`, one UPSERT), so reading an instance's health
never scans ``attempts``. A page of instances reads its records with one query (:func:`read`),
which adds what waits (from the outbox, so the cost follows the backlog) and the open dead
letters (their partial index).

``instance_alerts`` remembers the last alert sent per instance; :func:`claim_due` finds the
instances whose alert state should change and claims each change in the same transaction, so
any number of worker processes send one alert per change between them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .db import Database

Key = tuple[str, str]  # (plugin_id, instance_id)


@dataclass(frozen=True)
class Record:
    """One instance's record; the defaults are an instance that no attempt has touched yet."""

    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_dead_at: float | None = None
    failing_since: float | None = None  # the first failure since the last success
    consecutive_failures: int = 0
    last_error: str | None = None
    last_run_failures: int = 0  # the run of failures the last success ended, and when
    last_run_ended_at: float | None = None
    pending: int = 0
    dead_letters_open: int = 0

    @property
    def last_attempt_at(self) -> float | None:
        ended = [t for t in (self.last_success_at, self.last_failure_at) if t is not None]
        return max(ended) if ended else None


# -- kept by every outcome -------------------------------------------------------------------

_RECORD = """
INSERT INTO instance_health (plugin_id, instance_id, last_success_at, last_failure_at,
    last_dead_at, failing_since, consecutive_failures, last_error)
SELECT plugin_id, instance_id,
       CASE WHEN :ok THEN :now END, CASE WHEN :ok THEN NULL ELSE :now END,
       CASE WHEN :dead THEN :now END, CASE WHEN :ok THEN NULL ELSE :now END,
       CASE WHEN :ok THEN 0 ELSE 1 END, :error
FROM deliveries WHERE seq = :seq
ON CONFLICT (plugin_id, instance_id) DO UPDATE SET
    last_success_at = coalesce(excluded.last_success_at, instance_health.last_success_at),
    last_failure_at = coalesce(excluded.last_failure_at, instance_health.last_failure_at),
    last_dead_at = coalesce(excluded.last_dead_at, instance_health.last_dead_at),
    failing_since = CASE WHEN :ok THEN NULL
                    ELSE coalesce(instance_health.failing_since, :now) END,
    consecutive_failures = CASE WHEN :ok THEN 0
                           ELSE instance_health.consecutive_failures + 1 END,
    last_error = excluded.last_error,
    last_run_failures = CASE WHEN :ok AND instance_health.consecutive_failures > 0
                        THEN instance_health.consecutive_failures
                        ELSE instance_health.last_run_failures END,
    last_run_ended_at = CASE WHEN :ok AND instance_health.consecutive_failures > 0
                        THEN :now ELSE instance_health.last_run_ended_at END
"""


def record_in(
    conn: sqlite3.Connection, seq: int, outcome: str, error: str | None, now: float
) -> None:
    """Count one attempt's ``outcome`` (delivered, retry, dead) for its delivery's instance."""
    ok = outcome == "delivered"
    params = {"seq": seq, "ok": ok, "dead": outcome == "dead", "now": now}
    conn.execute(_RECORD, {**params, "error": None if ok else error})


# -- read for a page of instances ------------------------------------------------------------

_READ = """
WITH page (plugin_id, instance_id) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:keys)),
waiting AS (
    SELECT d.plugin_id, d.instance_id, count(*) AS n
    FROM outbox AS o CROSS JOIN deliveries AS d ON d.seq = o.delivery_seq
    WHERE d.state = 'pending'
    GROUP BY d.plugin_id, d.instance_id)
SELECT p.plugin_id, p.instance_id, h.last_success_at, h.last_failure_at, h.last_dead_at,
       h.failing_since, coalesce(h.consecutive_failures, 0) AS consecutive_failures,
       h.last_error, coalesce(h.last_run_failures, 0) AS last_run_failures,
       h.last_run_ended_at, coalesce(w.n, 0) AS pending,
       (SELECT count(*) FROM dead_letters AS l
        WHERE l.plugin_id = p.plugin_id AND l.instance_id = p.instance_id
          AND l.redriven_at IS NULL) AS dead_letters_open
FROM page AS p
LEFT JOIN instance_health AS h
       ON h.plugin_id = p.plugin_id AND h.instance_id = p.instance_id
LEFT JOIN waiting AS w ON w.plugin_id = p.plugin_id AND w.instance_id = p.instance_id
"""


def _params(keys: Iterable[Key]) -> dict[str, Any]:
    return {"keys": json.dumps([list(k) for k in keys])}


def _records(rows: list[sqlite3.Row]) -> dict[Key, Record]:
    return {
        (r["plugin_id"], r["instance_id"]): Record(
            last_success_at=r["last_success_at"],
            last_failure_at=r["last_failure_at"],
            last_dead_at=r["last_dead_at"],
            failing_since=r["failing_since"],
            consecutive_failures=r["consecutive_failures"],
            last_error=r["last_error"],
            last_run_failures=r["last_run_failures"],
            last_run_ended_at=r["last_run_ended_at"],
            pending=r["pending"],
            dead_letters_open=r["dead_letters_open"],
        )
        for r in rows
    }


def read(db: Database, keys: Iterable[Key]) -> dict[Key, Record]:
    """The records of these instances, in one query."""
    return _records(db.read(_READ, _params(keys)))


async def aread(db: Database, keys: Iterable[Key]) -> dict[Key, Record]:
    return _records(await db.aread(_READ, _params(keys)))


# -- alerts ----------------------------------------------------------------------------------

# Instances (that still exist) whose alert state should change. To failing, from recovered
# (or never alerted, since the instance was made): :after failures in a row now, or a dead
# letter or such a run that ended since the last alert, so a run over before anyone looked
# still counts. To recovered, from failing: the last attempt succeeded.
_DUE = """
SELECT h.plugin_id, h.instance_id,
       CASE WHEN a.state = 'failing' THEN 'recovered' ELSE 'failing' END AS state
FROM instance_health AS h
JOIN instances AS i ON i.plugin_id = h.plugin_id AND i.instance_id = h.instance_id
LEFT JOIN instance_alerts AS a ON a.plugin_id = h.plugin_id AND a.instance_id = h.instance_id
WHERE (a.state = 'failing' AND h.consecutive_failures = 0)
   OR (coalesce(a.state, 'recovered') = 'recovered' AND (
         h.consecutive_failures >= :after
         OR h.last_dead_at > coalesce(a.changed_at, i.created_at)
         OR (h.last_run_failures >= :after
             AND h.last_run_ended_at > coalesce(a.changed_at, i.created_at))))
ORDER BY h.plugin_id, h.instance_id
"""
# What was before alerts were turned on is not news: each instance starts from now.
_BASELINE = """
INSERT OR IGNORE INTO instance_alerts (plugin_id, instance_id, state, changed_at)
SELECT plugin_id, instance_id, 'recovered', ? FROM instances
"""
_CLAIM_FAILING = """
INSERT INTO instance_alerts (plugin_id, instance_id, state, changed_at)
VALUES (?, ?, 'failing', ?)
ON CONFLICT (plugin_id, instance_id) DO UPDATE SET state = 'failing', changed_at = ?
WHERE instance_alerts.state = 'recovered'
"""
_CLAIM_RECOVERED = """
UPDATE instance_alerts SET state = 'recovered', changed_at = ?
WHERE plugin_id = ? AND instance_id = ? AND state = 'failing'
"""
_ALERTED_FAILING = "SELECT plugin_id, instance_id FROM instance_alerts WHERE state = 'failing'"


@dataclass(frozen=True)
class Change:
    """An alert to send: ``instance.<state>`` about one instance."""

    plugin_id: str
    instance_id: str
    state: str  # failing | recovered


def baseline(now: float) -> Any:
    """An op that gives every instance not alerted yet a starting point at ``now``."""

    def op(conn: sqlite3.Connection) -> None:
        conn.execute(_BASELINE, (now,))

    return op


def due(db: Database, after: int) -> bool:
    """Whether some instance's alert state should change (a read: no write lock taken)."""
    return bool(db.read(_DUE, {"after": after}))


def claim_due(after: int, now: float) -> Any:
    """An op that claims every change that is due; the caller sends what it returns."""

    def op(conn: sqlite3.Connection) -> list[Change]:
        claimed = []
        for r in conn.execute(_DUE, {"after": after}).fetchall():
            key = (r["plugin_id"], r["instance_id"])
            if r["state"] == "failing":
                cur = conn.execute(_CLAIM_FAILING, (*key, now, now))
            else:
                cur = conn.execute(_CLAIM_RECOVERED, (now, *key))
            if cur.rowcount:
                claimed.append(Change(*key, r["state"]))
        return claimed

    return op


def alerted_failing(db: Database) -> set[Key]:
    """The instances whose last alert said failing (a success of theirs may be a recovery)."""
    return {(r[0], r[1]) for r in db.read(_ALERTED_FAILING)}

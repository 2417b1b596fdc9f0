"""Operator views of the database file: an online backup, figures, health checks, a tail.

Each reads through its own connection, never the writer, so it works while ``serve`` runs.
Backup, stats and doctor hold one read transaction (a WAL snapshot) for their whole run: the
figures agree with each other and the backup is the file as it was at one commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StorageUnavailable
from .plugins import Registry
from .store import Database
from .store.db import connect
from .store.deliveries import IS_LANE_HEAD

BACKUP_PAGES_PER_STEP = 1024  # 4 MiB a step with 4 KiB pages: a smooth bar, few callbacks
TAIL_POLL_SECONDS = 0.5
TAIL_BATCH = 500
_MIB = 1024 * 1024


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction, started now."""
    conn = connect(db.path, db.synchronous, db.busy_timeout)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        # BEGIN is deferred: the snapshot is taken by the first read, so read at once.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        yield conn
    finally:
        conn.close()


# -- backup ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupReport:
    path: Path
    pages: int
    bytes: int
    deliveries: int
    seconds: float


def backup(
    db: Database, target: Path, progress: Callable[[int, int], None] | None = None
) -> BackupReport:
    """Copy the database to ``target`` with SQLite's online backup API; ``progress(done, total)``.

    The source connection holds its read transaction across every step, so writers committing
    meanwhile neither restart the copy nor leak into it. The copy is written beside the target
    and renamed into place, so ``target`` is never a half-written file.
    """
    started = time.perf_counter()
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)

    def step(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    dest = sqlite3.connect(str(partial), isolation_level=None)
    try:
        with snapshot(db) as source:
            source.backup(dest, pages=BACKUP_PAGES_PER_STEP, progress=step)
        # One self-contained file: no -wal beside it to forget when it is copied off the box.
        dest.execute("PRAGMA journal_mode = DELETE")
        pages = int(dest.execute("PRAGMA page_count").fetchone()[0])
        count = int(dest.execute("SELECT count(*) FROM deliveries").fetchone()[0])
    except BaseException as exc:
        dest.close()
        partial.unlink(missing_ok=True)
        if isinstance(exc, sqlite3.Error):  # disk full, unreadable source, ...
            raise StorageUnavailable(f"backup failed: {exc}") from exc
        raise
    dest.close()
    os.replace(partial, target)
    _fsync_dir(target.parent)
    return BackupReport(target, pages, target.stat().st_size, count, time.perf_counter() - started)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- stats -----------------------------------------------------------------------------------

_OUTBOX = """
SELECT sum(o.parked = 0), sum(o.parked = 1), sum(coalesce(o.lease_until, 0) >= :now),
       count(DISTINCT o.lane), min(CASE WHEN o.parked = 0 THEN d.received_at END)
FROM outbox AS o JOIN deliveries AS d ON d.seq = o.delivery_seq
"""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def stats(db: Database, now: float) -> dict[str, Any]:
    """The state of the file at one moment, as plain numbers (ages in seconds, sizes in bytes)."""
    with snapshot(db) as conn:
        states = {
            r[0]: r[1]
            for r in conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state")
        }
        received = conn.execute(
            "SELECT sum(received_at >= ?), sum(received_at >= ?) FROM deliveries",
            (now - 3600, now - 86_400),
        ).fetchone()
        waiting, parked, leased, lanes, oldest = conn.execute(_OUTBOX, {"now": now}).fetchone()
        attempts = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT outcome, count(*) FROM attempts WHERE started_at >= ? GROUP BY outcome",
                (now - 3600,),
            )
        }
        dead = conn.execute(
            "SELECT sum(redriven_at IS NULL), sum(redriven_at IS NOT NULL) FROM dead_letters"
        ).fetchone()
        instances = conn.execute("SELECT count(*), sum(enabled) FROM instances").fetchone()
    return {
        "deliveries": {
            "pending": states.get("pending", 0),
            "delivered": states.get("delivered", 0),
            "dead": states.get("dead", 0),
            "total": sum(states.values()),
        },
        "received": {"last_hour": received[0] or 0, "last_day": received[1] or 0},
        "outbox": {
            "waiting": waiting or 0,
            "leased": leased or 0,
            "parked": parked or 0,
            "lanes": lanes,
            "oldest_pending_age_seconds": None if oldest is None else max(0.0, now - oldest),
        },
        "attempts_last_hour": {k: attempts.get(k, 0) for k in ("delivered", "retry", "dead")},
        "dead_letters": {"open": dead[0] or 0, "redriven": dead[1] or 0},
        "instances": {"total": instances[0], "enabled": instances[1] or 0},
        "files": {
            "database_bytes": _file_size(db.path),
            "wal_bytes": _file_size(Path(f"{db.path}-wal")),
        },
    }


# -- doctor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """When the doctor starts to worry."""

    wal_warn_bytes: int = 64 * _MIB  # maintenance checkpoints hourly; more is a stuck reader
    stuck_attempts: int = 3
    stuck_seconds: float = 15 * 60


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


_STUCK_HEADS = f"""
SELECT d.id, d.plugin_id, d.instance_id, d.attempts, d.received_at, o.parked,
       (SELECT count(*) FROM outbox AS w WHERE w.lane = o.lane) AS waiting
FROM outbox AS o JOIN deliveries AS d ON d.seq = o.delivery_seq
WHERE o.lane IS NOT NULL
  AND {IS_LANE_HEAD}
  AND (o.parked = 1 OR d.attempts >= ? OR d.received_at < ?)
ORDER BY o.parked DESC, d.received_at
"""
_NO_TARGET = """
SELECT plugin_id || '/' || instance_id FROM instances
WHERE enabled = 1 AND handler = 'forward' AND coalesce(trim(target_url), '') = ''
ORDER BY 1
"""


def url_signing_plugins(registry: Registry) -> set[str]:
    """Plugins whose provider signs the URL it called (Twilio): they need the public URL."""
    return {
        p.id
        for p in registry.all()
        if any(route.verify.scheme == "twilio" for route in p.routes.values())
    }


def _names(items: list[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def doctor(
    db: Database,
    *,
    now: float,
    public_url: str | None,
    signing_plugins: Collection[str],
    limits: Limits = Limits(),
    full: bool = False,
) -> list[Check]:
    """Every check, in a fixed order; a ``fail`` needs an operator, a ``warn`` a look."""
    checks: list[Check] = []
    with snapshot(db) as conn:
        pragma = "integrity_check" if full else "quick_check"
        try:
            found = [r[0] for r in conn.execute(f"PRAGMA {pragma}")]
        except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
            found = [str(exc)]
        checks.append(
            Check("integrity", "ok" if found == ["ok"] else "fail", f"{pragma}: {_names(found, 3)}")
        )
        wal = _file_size(Path(f"{db.path}-wal"))
        checks.append(
            Check(
                "wal",
                "warn" if wal > limits.wal_warn_bytes else "ok",
                f"{wal / _MIB:.1f} MiB (warn above {limits.wal_warn_bytes / _MIB:.0f})",
            )
        )
        # The forward handler dead-letters every event of such an instance at once.
        bare = [r[0] for r in conn.execute(_NO_TARGET)]
        checks.append(
            Check(
                "targets",
                "fail" if bare else "ok",
                f"forward without target_url: {_names(bare)}"
                if bare
                else "every enabled forward instance has a target_url",
            )
        )
        marks = ",".join("?" * len(signing_plugins))
        unsigned = (
            []
            if public_url or not signing_plugins
            else [
                r[0]
                for r in conn.execute(
                    "SELECT plugin_id || '/' || instance_id FROM instances"
                    f" WHERE plugin_id IN ({marks})"
                    f" AND coalesce(json_extract(config, '$.public_url'), '') = '' ORDER BY 1",
                    list(signing_plugins),
                )
            ]
        )
        # A warning only: it verifies when providers reach the box at the URL it sees.
        checks.append(
            Check(
                "public_url",
                "warn" if unsigned else "ok",
                f"URL-signed instances without a public URL (set "
                f"INGRESS_BOX_PUBLIC_URL): {_names(unsigned)}"
                if unsigned
                else "set"
                if public_url
                else "no URL-signed instance needs it",
            )
        )
        heads = conn.execute(
            _STUCK_HEADS, (limits.stuck_attempts, now - limits.stuck_seconds)
        ).fetchall()
        described = [
            f"{h['plugin_id']}/{h['instance_id']} head {h['id']} "
            f"({'parked' if h['parked'] else str(h['attempts']) + ' attempts'}, "
            f"{int(now - h['received_at'])}s old, {h['waiting']} waiting)"
            for h in heads
        ]
        # A parked head waits for a redrive or discard forever; the others may still recover.
        status = "fail" if any(h["parked"] for h in heads) else "warn" if heads else "ok"
        checks.append(Check("lanes", status, _names(described, 3) if heads else "none stuck"))
        oldest = conn.execute(
            "SELECT min(d.received_at) FROM outbox AS o JOIN deliveries AS d "
            "ON d.seq = o.delivery_seq WHERE o.parked = 0"
        ).fetchone()[0]
        age = None if oldest is None else max(0.0, now - oldest)
        checks.append(
            Check(
                "oldest_pending",
                "warn" if age is not None and age > limits.stuck_seconds else "ok",
                "nothing pending" if age is None else f"{int(age)}s old",
            )
        )
        open_dead = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE redriven_at IS NULL"
        ).fetchone()[0]
        checks.append(Check("dead_letters", "warn" if open_dead else "ok", f"{open_dead} open"))
    return checks


# -- tail ------------------------------------------------------------------------------------

_NEW_DELIVERIES = """
SELECT seq, id, plugin_id, instance_id, route, provider_delivery_id, conversation, received_at
FROM deliveries WHERE seq > ? ORDER BY seq LIMIT ?
"""
_NEW_ATTEMPTS = """
SELECT a.id AS pos, a.attempt, a.started_at, a.duration_ms, a.outcome, a.status_code, a.error,
       d.id, d.plugin_id, d.instance_id, d.route
FROM attempts AS a JOIN deliveries AS d ON d.seq = a.delivery_seq
WHERE a.id > ? ORDER BY a.id LIMIT ?
"""


def tail(
    db: Database, since: float, *, follow: bool = True, sleep: Callable[[float], None] = time.sleep
) -> Iterator[dict[str, Any]]:
    """Deliveries received and attempts made from ``since`` (unix seconds) on, oldest first.

    Polls by sequence number and attempt id every half second; without ``follow`` it stops
    once it has caught up.
    """
    start = db.read_one(
        "SELECT (SELECT coalesce(min(seq) - 1, (SELECT coalesce(max(seq), 0) FROM deliveries))"
        " FROM deliveries WHERE received_at >= :t), (SELECT coalesce(min(id) - 1, (SELECT "
        "coalesce(max(id), 0) FROM attempts)) FROM attempts WHERE started_at >= :t)",
        {"t": since},
    )
    assert start is not None
    seq, pos = int(start[0]), int(start[1])
    while True:
        received = db.read(_NEW_DELIVERIES, (seq, TAIL_BATCH))
        attempts = db.read(_NEW_ATTEMPTS, (pos, TAIL_BATCH))
        events = [
            {
                "event": "received",
                "at": r["received_at"],
                "id": r["id"],
                "plugin": r["plugin_id"],
                "instance": r["instance_id"],
                "route": r["route"],
                "provider_delivery_id": r["provider_delivery_id"],
                "conversation": r["conversation"],
            }
            for r in received
        ]
        events += [
            {
                "event": "attempt",
                "at": r["started_at"] + r["duration_ms"] / 1000,
                "id": r["id"],
                "plugin": r["plugin_id"],
                "instance": r["instance_id"],
                "route": r["route"],
                "attempt": r["attempt"],
                "outcome": r["outcome"],
                "status_code": r["status_code"],
                "error": r["error"],
                "duration_ms": round(r["duration_ms"], 1),
            }
            for r in attempts
        ]
        yield from sorted(events, key=lambda e: e["at"])
        seq = received[-1]["seq"] if received else seq
        pos = attempts[-1]["pos"] if attempts else pos
        if len(received) < TAIL_BATCH and len(attempts) < TAIL_BATCH:
            if not follow:
                return
            sleep(TAIL_POLL_SECONDS)

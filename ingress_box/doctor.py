"""``ingress-box doctor``: every check of the file and its instances, from one snapshot.

A ``fail`` needs an operator, a ``warn`` a look. The figures come from the store; this module
decides what is worrying. On PostgreSQL the file's checks (integrity, WAL size) give way to
the database's: reached, and at the schema version this release knows; the rest are the same.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .plugins import Registry
from .store import Database, dbfile
from .store import instances as store_instances
from .store.activity import stuck_heads_in
from .store.backlog import backlog_in
from .store.postgres import SCHEMA_VERSION, PgDatabase, schema_version, server_version

_MIB = 1024 * 1024


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


def url_signing_plugins(registry: Registry) -> set[str]:
    """Plugins whose provider signs the URL it called (Twilio): they need the public URL."""
    return {
        p.id
        for p in registry.all()
        if any(route.verify.scheme == "twilio" for route in p.routes.values())
    }


def _names(items: list[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _file_checks(db: Database, conn: Any, limits: Limits, full: bool) -> list[Check]:
    pragma, found = dbfile.integrity_in(conn, full)
    wal = dbfile.sizes(db).wal_bytes
    return [
        Check("integrity", "ok" if found == ["ok"] else "fail", f"{pragma}: {_names(found, 3)}"),
        Check(
            "wal",
            "warn" if wal > limits.wal_warn_bytes else "ok",
            f"{wal / _MIB:.1f} MiB (warn above {limits.wal_warn_bytes / _MIB:.0f})",
        ),
    ]


def _database_check(conn: Any) -> Check:
    """PostgreSQL answers (the snapshot is its connection) with the schema this release knows."""
    server = server_version(conn)
    version = schema_version(conn)
    detail = f"PostgreSQL {server}, schema version {version}"
    if version != SCHEMA_VERSION:
        return Check("database", "fail", f"{detail} (this release knows {SCHEMA_VERSION})")
    return Check("database", "ok", detail)


def doctor(
    db: Database,
    *,
    now: float,
    public_url: str | None,
    signing_plugins: Collection[str],
    limits: Limits = Limits(),
    full: bool = False,
) -> list[Check]:
    """Every check, in a fixed order."""
    checks: list[Check] = []
    with dbfile.snapshot(db) as conn:
        if isinstance(db, PgDatabase):
            checks.append(_database_check(conn))
        else:
            checks += _file_checks(db, conn, limits, full)
        # The forward handler dead-letters every event of such an instance at once.
        bare = store_instances.without_target_in(conn)
        checks.append(
            Check(
                "targets",
                "fail" if bare else "ok",
                f"forward without target_url: {_names(bare)}"
                if bare
                else "every enabled forward instance has a target_url",
            )
        )
        unsigned = (
            []
            if public_url or not signing_plugins
            else store_instances.without_public_url_in(conn, signing_plugins)
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
        heads = stuck_heads_in(conn, limits.stuck_attempts, now - limits.stuck_seconds)
        described = [
            f"{h.plugin_id}/{h.instance_id} head {h.id} "
            f"({'parked' if h.parked else str(h.attempts) + ' attempts'}, "
            f"{int(now - h.received_at)}s old, {h.waiting} waiting)"
            for h in heads
        ]
        # A parked head waits for a redrive or discard forever; the others may still recover.
        status = "fail" if any(h.parked for h in heads) else "warn" if heads else "ok"
        checks.append(Check("lanes", status, _names(described, 3) if heads else "none stuck"))
        backlog = backlog_in(conn, now)
        age = backlog.oldest_pending_age
        checks.append(
            Check(
                "oldest_pending",
                "warn" if age is not None and age > limits.stuck_seconds else "ok",
                "nothing pending" if age is None else f"{int(age)}s old",
            )
        )
        checks.append(
            Check(
                "dead_letters",
                "warn" if backlog.dead_open else "ok",
                f"{backlog.dead_open} open",
            )
        )
    return checks

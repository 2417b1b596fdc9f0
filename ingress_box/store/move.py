"""``ingress-box move``: copy a SQLite box into an empty PostgreSQL database.

Everything the box holds goes over with its keys (delivery ids, so the same ``webhook-id``;
sequence numbers, so lanes keep their order; dead letter ids; mapping ids), from one read
snapshot of the file, in one PostgreSQL transaction: a move that fails leaves the database as
empty as it found it, and can be run again. What the copy changes on the way:

- a lane is joined by chr(31) instead of NUL (PostgreSQL text cannot hold NUL; see LANE_SQL);
- a lease is dropped: nothing runs on the file any more, so its rows are claimable at once;
- the search index is not copied: indexed deliveries are marked to be indexed again, and the
  worker rebuilds it with PostgreSQL's full text search;
- a dead letter's rowid (its place in the listing) becomes the ``pos`` column;
- huey's queue is not copied: it only holds wake-ups, the outbox remembers the work.

The file must not be written meanwhile (stop ``serve`` and every ``worker`` first): what it
accepts after the snapshot would stay behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from . import dbfile
from .db import Database
from .outbox import LANE_JOIN
from .postgres import WRITE_LOCK, PgConn, connect, migrate, redacted, tables

BATCH_ROWS = 1000

# Every table, parents before children, and what to read from the file for it. The columns
# are PostgreSQL's, in order; the SELECT gives them from SQLite.
TABLES: dict[str, tuple[str, str]] = {
    "instances": (
        "plugin_id, instance_id, enabled, handler, target_url, secret, previous_secret, "
        "previous_secret_until, verify_token, outbound_secret, session, lane_policy, config, "
        "created_at, updated_at",
        "SELECT plugin_id, instance_id, enabled, handler, target_url, secret, previous_secret, "
        "previous_secret_until, verify_token, outbound_secret, session, lane_policy, config, "
        "created_at, updated_at FROM instances ORDER BY plugin_id, instance_id",
    ),
    "deliveries": (
        "seq, id, plugin_id, instance_id, route, provider_delivery_id, conversation, method, "
        "subpath, content_type, headers, body, state, attempts, last_error, note, received_at, "
        "delivered_at, event_type, searchable",
        "SELECT seq, id, plugin_id, instance_id, route, provider_delivery_id, conversation, "
        "method, subpath, content_type, headers, body, state, attempts, last_error, note, "
        "received_at, delivered_at, event_type, "
        "CASE WHEN searchable = 2 THEN 1 ELSE searchable END FROM deliveries ORDER BY seq",
    ),
    "outbox": (
        "seq, delivery_seq, lane, available_at, lease_until, lease_owner, parked",
        "SELECT seq, delivery_seq, lane, available_at, NULL, NULL, parked FROM outbox ORDER BY seq",
    ),
    "dead_letters": (
        "pos, id, delivery_seq, plugin_id, instance_id, attempts, last_error, created_at, "
        "redriven_at",
        "SELECT rowid, id, delivery_seq, plugin_id, instance_id, attempts, last_error, "
        "created_at, redriven_at FROM dead_letters ORDER BY rowid",
    ),
    "attempts": (
        "id, delivery_seq, attempt, started_at, duration_ms, outcome, status_code, error, response",
        "SELECT id, delivery_seq, attempt, started_at, duration_ms, outcome, status_code, error, "
        "response FROM attempts ORDER BY id",
    ),
    "conversation_mappings": (
        "id, session, chat, plugin_id, instance_id, provider_conversation_id, state, metadata, "
        "created_at, updated_at",
        "SELECT id, session, chat, plugin_id, instance_id, provider_conversation_id, state, "
        "metadata, created_at, updated_at FROM conversation_mappings ORDER BY id",
    ),
    "bridges": (
        "id, gateway_kind, gateway_url, gateway_api_key, gateway_session, chatwoot_url, "
        "chatwoot_account_id, chatwoot_inbox_id, chatwoot_api_token, options, created_at",
        "SELECT id, gateway_kind, gateway_url, gateway_api_key, gateway_session, chatwoot_url, "
        "chatwoot_account_id, chatwoot_inbox_id, chatwoot_api_token, options, created_at "
        "FROM bridges ORDER BY id",
    ),
    "bridge_messages": (
        "id, bridge_id, direction, chat, wa_id, cw_message_id, part, cw_conversation_id, "
        "created_at, updated_at",
        "SELECT id, bridge_id, direction, chat, wa_id, cw_message_id, part, cw_conversation_id, "
        "created_at, updated_at FROM bridge_messages ORDER BY id",
    ),
    "bridge_aliases": (
        "bridge_id, alias, chat, updated_at",
        "SELECT bridge_id, alias, chat, updated_at FROM bridge_aliases ORDER BY bridge_id, alias",
    ),
    "bridge_openings": (
        "bridge_id, chat, claimed_at",
        "SELECT bridge_id, chat, claimed_at FROM bridge_openings ORDER BY bridge_id, chat",
    ),
    "rejections": (
        "id, plugin_id, instance_id, route, method, subpath, url, headers, body, received_at, "
        "status, reason, size",
        "SELECT id, plugin_id, instance_id, route, method, subpath, url, headers, body, "
        "received_at, status, reason, size FROM rejections ORDER BY id",
    ),
    "instance_health": (
        "plugin_id, instance_id, last_success_at, last_failure_at, last_dead_at, failing_since, "
        "consecutive_failures, last_error, last_run_failures, last_run_ended_at",
        "SELECT plugin_id, instance_id, last_success_at, last_failure_at, last_dead_at, "
        "failing_since, consecutive_failures, last_error, last_run_failures, last_run_ended_at "
        "FROM instance_health ORDER BY plugin_id, instance_id",
    ),
    "instance_alerts": (
        "plugin_id, instance_id, state, changed_at",
        "SELECT plugin_id, instance_id, state, changed_at FROM instance_alerts "
        "ORDER BY plugin_id, instance_id",
    ),
    # The admin token's hash and the like; the schema's own instances_version stays.
    "meta": ("key, value", "SELECT key, value FROM meta ORDER BY key"),
}

_INSERT = {
    table: f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})"
    for table, (columns, _) in TABLES.items()
}
_INSERT["meta"] += " ON CONFLICT (key) DO NOTHING"

# The identity columns: the next id PostgreSQL hands out comes after the copied ones.
IDENTITIES = {
    "deliveries": "seq",
    "outbox": "seq",
    "dead_letters": "pos",
    "attempts": "id",
    "conversation_mappings": "id",
    "bridge_messages": "id",
    "rejections": "id",
}

# A database with a row in any table beyond the rows the schema brings (its version, meta.s
# instances_version) is not empty.
_SCHEMA_ROWS = {"ingress_box_schema": 1, "meta": 1}


@dataclass(frozen=True)
class Moved:
    to: str  # the database, without its password
    rows: dict[str, int]  # per table
    seconds: float


def _count(conn: Any, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _refuse_unless_empty(conn: PgConn, name: str) -> None:
    for table in list(tables(conn)):
        if _count(conn, table) > _SCHEMA_ROWS.get(table, 0):
            raise InvalidInput(
                f"{name} is not empty (table {table} has rows): move needs an empty database"
            )


def _lane(lane: str | None) -> str | None:
    """A lane as outbox.LANE_SQL joins it on PostgreSQL."""
    return None if lane is None else lane.replace(LANE_JOIN["sqlite"], LANE_JOIN["postgresql"])


def _copy(source: Any, target: PgConn, table: str, report: Callable[[int], None]) -> int:
    cursor = source.execute(TABLES[table][1])
    copied = 0
    while rows := cursor.fetchmany(BATCH_ROWS):
        if table == "outbox":  # lanes joined by NUL become lanes joined by chr(31)
            rows = [(r[0], r[1], _lane(r[2]), *r[3:]) for r in rows]
        target.executemany(_INSERT[table], [tuple(r) for r in rows])
        copied += len(rows)
        report(len(rows))
    return copied


def move(source: Database, url: str, progress: Callable[[int, int], None] | None = None) -> Moved:
    """Copy the SQLite box ``source`` (opened read-only) into the empty database at ``url``;
    ``progress(done, total)`` in rows."""
    started = time.perf_counter()
    name = redacted(url)
    target = connect(url)
    try:
        migrate(target, name)
        with dbfile.snapshot(source) as conn:
            total = sum(_count(conn, table) for table in TABLES)
            done = 0

            def report(rows: int) -> None:
                nonlocal done
                done += rows
                if progress is not None:
                    progress(done, total)

            target.execute("BEGIN")
            try:
                # As a writer: no serve or worker on the database writes while it fills.
                target.execute(WRITE_LOCK)
                _refuse_unless_empty(target, name)
                rows = {table: _copy(conn, target, table, report) for table in TABLES}
                for table, column in IDENTITIES.items():
                    target.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                        f"coalesce(max({column}), 0) + 1, false) FROM {table}"
                    )
                target.execute("COMMIT")
            except BaseException:
                target.execute("ROLLBACK")
                raise
    finally:
        target.close()
    return Moved(name, rows, time.perf_counter() - started)

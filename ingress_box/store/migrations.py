"""Schema versions: ``PRAGMA user_version`` says which migrations a file has had.

``schema.sql`` is the current schema, readable in one place, and the only source of a new file:
an empty file gets it and the latest version in one transaction. Version 1 is the 0.1.0 baseline;
0.1.0 replayed ``schema.sql`` on every open and never set ``user_version``, so a file at 0 that
already has our tables is recorded as 1. Every later change is a :class:`Migration`, numbered
from 2 with no gaps, and ``schema.sql`` changes with it (a test checks that an upgraded file and a
fresh one end up with the same schema).

Each step runs in its own ``BEGIN IMMEDIATE`` transaction together with its ``user_version`` bump,
and the version is read again once the write lock is held: when ``serve`` and ``worker`` open the
same old file at once, the second finds the step done and goes on to the next. A step that fails
leaves the file at the version before it, with nothing of the step applied.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import SchemaTooNew
from ..values import is_utf8

log = logging.getLogger(__name__)

BASELINE = 1  # the schema of release 0.1.0


@dataclass(frozen=True)
class Migration:
    """Step ``version``: SQL text (one or more statements) or a function of the connection.

    It runs inside the transaction, so it must not commit; SQLite cannot change
    ``PRAGMA foreign_keys`` or ``journal_mode`` there.
    """

    version: int
    name: str
    step: str | Callable[[sqlite3.Connection], None]

    def apply(self, conn: sqlite3.Connection) -> None:
        if callable(self.step):
            self.step(conn)
        else:
            for statement in statements(self.step):
                conn.execute(statement)


# 0.2: requests refused for their signature or timestamp, kept to be admitted later.
_REJECTIONS = """
CREATE TABLE IF NOT EXISTS rejections (
    id           INTEGER PRIMARY KEY,
    plugin_id    TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    route        TEXT NOT NULL,
    method       TEXT NOT NULL,
    subpath      TEXT NOT NULL,
    url          TEXT NOT NULL,
    headers      TEXT NOT NULL,
    body         BLOB NOT NULL,
    received_at  REAL NOT NULL,
    status       INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0)
);
CREATE INDEX IF NOT EXISTS rejections_instance ON rejections (plugin_id, instance_id, id);
CREATE TRIGGER IF NOT EXISTS rejections_of_deleted_instance AFTER DELETE ON instances BEGIN
    DELETE FROM rejections WHERE plugin_id = OLD.plugin_id AND instance_id = OLD.instance_id;
END;
"""

# 0.2: an event type per delivery, and full-text search over the bodies still kept.
_SEARCH = """
ALTER TABLE deliveries ADD COLUMN event_type TEXT;
ALTER TABLE deliveries ADD COLUMN searchable INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS deliveries_unindexed ON deliveries (seq) WHERE searchable = 1;
CREATE VIRTUAL TABLE IF NOT EXISTS deliveries_search
    USING fts5(body, content='deliveries', content_rowid='seq');
CREATE TRIGGER IF NOT EXISTS deliveries_search_update AFTER UPDATE OF body ON deliveries
WHEN old.searchable = 2 BEGIN
    INSERT INTO deliveries_search (deliveries_search, rowid, body)
    SELECT 'delete', old.seq, CAST(old.body AS TEXT) WHERE old.body IS NOT NULL;
    INSERT INTO deliveries_search (rowid, body)
    SELECT new.seq, CAST(new.body AS TEXT) WHERE new.body IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_search_delete AFTER DELETE ON deliveries
WHEN old.searchable = 2 AND old.body IS NOT NULL BEGIN
    INSERT INTO deliveries_search (deliveries_search, rowid, body)
    VALUES ('delete', old.seq, CAST(old.body AS TEXT));
END;
"""


def _search(conn: sqlite3.Connection) -> None:
    """The columns, the index and its triggers; the bodies kept that are UTF-8 text (Python's
    test: SQLite has none) are marked for the indexer, which fills the index in the
    background once ``serve`` runs, so a big file does not hold up the start."""
    for statement in statements(_SEARCH):
        conn.execute(statement)
    rows = conn.execute("SELECT seq, body FROM deliveries WHERE body IS NOT NULL")
    text = [(seq,) for seq, body in rows if is_utf8(body)]
    conn.executemany("UPDATE deliveries SET searchable = 1 WHERE seq = ?", text)


# The steps after the baseline, in order. Release 0.2's steps may still change until it ships.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "bridges",
        """
        CREATE TABLE bridges (
            id                   TEXT PRIMARY KEY,
            gateway_kind         TEXT NOT NULL
                                 CHECK (gateway_kind IN ('waha', 'evolution', 'gowa', 'openwa')),
            gateway_url          TEXT NOT NULL,
            gateway_api_key      TEXT NOT NULL DEFAULT '',
            gateway_session      TEXT NOT NULL,
            chatwoot_url         TEXT NOT NULL,
            chatwoot_account_id  INTEGER NOT NULL,
            chatwoot_inbox_id    INTEGER NOT NULL,
            chatwoot_api_token   TEXT NOT NULL,
            options              TEXT NOT NULL DEFAULT '{}',
            created_at           REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE bridge_messages (
            id                  INTEGER PRIMARY KEY,
            bridge_id           TEXT NOT NULL,
            direction           TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
            chat                TEXT NOT NULL,
            wa_id               TEXT,
            cw_message_id       INTEGER,
            part                INTEGER NOT NULL DEFAULT 0,
            cw_conversation_id  INTEGER,
            created_at          REAL NOT NULL,
            updated_at          REAL NOT NULL
        );
        CREATE UNIQUE INDEX bridge_messages_wa
            ON bridge_messages (bridge_id, wa_id, part) WHERE wa_id IS NOT NULL;
        CREATE UNIQUE INDEX bridge_messages_cw
            ON bridge_messages (bridge_id, cw_message_id, part) WHERE cw_message_id IS NOT NULL;
        CREATE INDEX bridge_messages_chat ON bridge_messages (bridge_id, chat, created_at);
        CREATE TABLE bridge_aliases (
            bridge_id   TEXT NOT NULL,
            alias       TEXT NOT NULL,
            chat        TEXT NOT NULL,
            updated_at  REAL NOT NULL,
            PRIMARY KEY (bridge_id, alias)
        ) WITHOUT ROWID;
        """,
    ),
    Migration(3, "quarantine", _REJECTIONS),
    Migration(
        4,
        "instance health",
        """
        CREATE TABLE instance_health (
            plugin_id             TEXT NOT NULL,
            instance_id           TEXT NOT NULL,
            last_success_at       REAL,
            last_failure_at       REAL,
            last_dead_at          REAL,
            failing_since         REAL,
            consecutive_failures  INTEGER NOT NULL DEFAULT 0,
            last_error            TEXT,
            last_run_failures     INTEGER NOT NULL DEFAULT 0,
            last_run_ended_at     REAL,
            PRIMARY KEY (plugin_id, instance_id)
        ) WITHOUT ROWID;
        CREATE TABLE instance_alerts (
            plugin_id    TEXT NOT NULL,
            instance_id  TEXT NOT NULL,
            state        TEXT NOT NULL CHECK (state IN ('failing', 'recovered')),
            changed_at   REAL NOT NULL,
            PRIMARY KEY (plugin_id, instance_id)
        ) WITHOUT ROWID;
        CREATE TRIGGER instances_forget_health AFTER DELETE ON instances BEGIN
            DELETE FROM instance_health
            WHERE plugin_id = old.plugin_id AND instance_id = old.instance_id;
            DELETE FROM instance_alerts
            WHERE plugin_id = old.plugin_id AND instance_id = old.instance_id;
        END;
        -- What the attempts already recorded say, so an upgraded box knows its instances'
        -- health at once (two passes over attempts; the error text is not recovered).
        INSERT INTO instance_health (plugin_id, instance_id, last_success_at, last_failure_at,
            last_dead_at, failing_since, consecutive_failures)
        WITH ended AS MATERIALIZED (
            SELECT d.plugin_id, d.instance_id, a.outcome,
                   a.started_at + a.duration_ms / 1000.0 AS at
            FROM attempts AS a JOIN deliveries AS d ON d.seq = a.delivery_seq),
        last_ok AS (
            SELECT plugin_id, instance_id,
                   max(at) FILTER (WHERE outcome = 'delivered') AS ok_at
            FROM ended GROUP BY plugin_id, instance_id)
        SELECT e.plugin_id, e.instance_id, l.ok_at,
               max(e.at) FILTER (WHERE e.outcome != 'delivered'),
               max(e.at) FILTER (WHERE e.outcome = 'dead'),
               min(e.at) FILTER (WHERE e.outcome != 'delivered' AND e.at > coalesce(l.ok_at, 0)),
               count(*) FILTER (WHERE e.outcome != 'delivered' AND e.at > coalesce(l.ok_at, 0))
        FROM ended AS e JOIN last_ok AS l USING (plugin_id, instance_id)
        GROUP BY e.plugin_id, e.instance_id;
        """,
    ),
    Migration(
        5,
        "attempt answers and the outbox's own order",
        """
        ALTER TABLE attempts ADD COLUMN response TEXT;
        -- The log numbered 1, 2, 3, 1 across a redrive; it now counts on.
        UPDATE attempts SET attempt = (SELECT count(*) FROM attempts AS b
                                       WHERE b.delivery_seq = attempts.delivery_seq
                                         AND b.id <= attempts.id);
        -- Lanes were ordered by the delivery's seq, so a replay could only jump the queue.
        CREATE TABLE outbox_queued (
            seq           INTEGER PRIMARY KEY,
            delivery_seq  INTEGER NOT NULL UNIQUE REFERENCES deliveries (seq),
            lane          TEXT,
            available_at  REAL NOT NULL,
            lease_until   REAL,
            lease_owner   TEXT,
            parked        INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO outbox_queued (seq, delivery_seq, lane, available_at, lease_until,
                                   lease_owner, parked)
            SELECT delivery_seq, delivery_seq, lane, available_at, lease_until, lease_owner,
                   parked
            FROM outbox;
        DROP TABLE outbox;
        ALTER TABLE outbox_queued RENAME TO outbox;
        CREATE INDEX outbox_lane ON outbox (lane, seq);
        CREATE INDEX outbox_available ON outbox (available_at);
        """,
    ),
    Migration(6, "search", _search),
    Migration(
        7,
        "bridge openings",
        """
        CREATE TABLE bridge_openings (
            bridge_id   TEXT NOT NULL,
            chat        TEXT NOT NULL,
            claimed_at  REAL NOT NULL,
            PRIMARY KEY (bridge_id, chat)
        ) WITHOUT ROWID;
        """,
    ),
)


def latest(migrations: Sequence[Migration]) -> int:
    """The version a file has once every step of ``migrations`` is applied."""
    numbers = [m.version for m in migrations]
    if numbers != list(range(BASELINE + 1, BASELINE + 1 + len(numbers))):
        raise ValueError(f"migrations must be numbered from {BASELINE + 1} without gaps: {numbers}")
    return BASELINE + len(migrations)


def statements(script: str) -> Iterator[str]:
    """Split a script into statements (``executescript`` would commit the open transaction)."""
    pieces = script.split(";")
    pending = ""
    for i, piece in enumerate(pieces):
        pending += piece if i == len(pieces) - 1 else piece + ";"
        # complete_statement knows strings, comments and trigger bodies: a ';' inside one of
        # them does not end the statement.
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending  # a last statement without its ';', or a trailing comment


def user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {int(version)}")  # a PRAGMA takes no parameters


def _has_tables(conn: sqlite3.Connection) -> bool:
    # huey keeps its own tables in the same file: only ours tell a 0.1.0 file from an empty one.
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
    ).fetchone()
    return row is not None


def migrate(
    conn: sqlite3.Connection,
    schema: str,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    name: str = "the database",
) -> int:
    """Bring the file behind ``conn`` (autocommit mode) to the latest version; return it.

    Raises :class:`SchemaTooNew` for a file from a newer release, before changing anything.
    """
    target = latest(migrations)
    by_version = {m.version: m for m in migrations}
    while True:
        version = user_version(conn)
        if version > target:
            raise SchemaTooNew(name, version, target)
        if version == target:
            return version
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(conn)  # again, under the lock: another process may be ahead
            if version == 0 and not _has_tables(conn):
                for statement in statements(schema):
                    conn.execute(statement)
                _set_version(conn, target)
                done = f"created at schema version {target}"
            elif version == 0:
                _set_version(conn, BASELINE)
                done = f"recorded the 0.1.0 schema as version {BASELINE}"
            elif version < target:
                step = by_version[version + 1]
                try:
                    step.apply(conn)
                except Exception as exc:
                    exc.add_note(f"{name}: migration {step.version} ({step.name}) failed")
                    raise
                _set_version(conn, step.version)
                done = f"applied migration {step.version} ({step.name})"
            else:
                done = ""  # another process got here first; the loop checks what it left
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if done:
            log.info("%s: %s", name, done)

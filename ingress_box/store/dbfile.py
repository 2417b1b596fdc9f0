"""The database file as a whole: a read snapshot, an online copy, an integrity check, its size.

Each reads through a connection of its own, never the writer, so it works while ``serve`` runs.
A snapshot is one read transaction (in WAL mode, the file as it was at one commit) held for as
long as its ``with`` block: figures read inside it agree with each other, and a copy taken
inside it is the file at that moment.

On PostgreSQL a snapshot is a ``REPEATABLE READ`` transaction, and the size is the box's tables';
there is no file to copy or check (``pg_dump`` backs it up, the server keeps its pages sound).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageUnavailable
from .db import Database, connect
from .postgres import PgDatabase
from .postgres import connect as pg_connect

COPY_PAGES_PER_STEP = 1024  # 4 MiB a step with 4 KiB pages: a smooth bar, few callbacks


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[Any]:
    """A read-only connection inside one read transaction, started now."""
    if isinstance(db, PgDatabase):
        with _pg_snapshot(db) as pg:
            yield pg
        return
    conn = connect(db.path, db.synchronous, db.busy_timeout, readonly=db.readonly)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        # BEGIN is deferred: the snapshot is taken by the first read, so read at once.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _pg_snapshot(db: PgDatabase) -> Iterator[Any]:
    conn = pg_connect(db.url, readonly=True)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute("SELECT 1").fetchone()  # the snapshot is taken by the first statement
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class Copied:
    pages: int
    deliveries: int


def copy(db: Database, dest: Path, progress: Callable[[int, int], None] | None = None) -> Copied:
    """Write the database to a new file ``dest`` with SQLite's online backup API.

    The source holds one snapshot across every step, so writers committing meanwhile neither
    restart the copy nor leak into it. ``progress(done, total)`` is called in pages. A SQLite
    failure (disk full, unreadable source, ...) is :class:`StorageUnavailable`; ``dest`` may
    then be left half-written, for the caller to remove.
    """

    def step(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    try:
        target = sqlite3.connect(str(dest), isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"backup failed: {exc}") from exc
    try:
        with snapshot(db) as source:
            source.backup(target, pages=COPY_PAGES_PER_STEP, progress=step)
        # One self-contained file: no -wal beside it to forget when it is copied off the box.
        target.execute("PRAGMA journal_mode = DELETE")
        pages = int(target.execute("PRAGMA page_count").fetchone()[0])
        deliveries = int(target.execute("SELECT count(*) FROM deliveries").fetchone()[0])
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"backup failed: {exc}") from exc
    finally:
        target.close()
    return Copied(pages, deliveries)


def integrity_in(conn: sqlite3.Connection, full: bool = False) -> tuple[str, list[str]]:
    """The check's name and what it found (``["ok"]`` for a sound file): ``quick_check``,
    or the slower ``integrity_check`` that also reads every index against its table."""
    pragma = "integrity_check" if full else "quick_check"
    try:
        return pragma, [r[0] for r in conn.execute(f"PRAGMA {pragma}")]
    except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
        return pragma, [str(exc)]


def quick_check(db: Database, seconds: float) -> list[str] | None:
    """What ``quick_check`` finds (``["ok"]`` for a sound file), or None when it could not finish
    within ``seconds`` (a big file: the check is given up, not the start)."""
    deadline = time.monotonic() + seconds
    conn = connect(db.path, db.synchronous, db.busy_timeout, readonly=True)
    try:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            return [r[0] for r in conn.execute("PRAGMA quick_check")]
        except sqlite3.OperationalError as exc:
            if time.monotonic() > deadline:  # interrupted by the progress handler
                return None
            return [str(exc)]
        except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
            return [str(exc)]
    finally:
        conn.close()


@dataclass(frozen=True)
class Sizes:
    database_bytes: int
    wal_bytes: int


# On PostgreSQL: what the box's tables take, their indexes and TOAST included. Its write-ahead
# log is the server's, shared with every database there, so it is not the box's to report.
_PG_BYTES = """
SELECT CAST(coalesce(sum(pg_total_relation_size(c.oid)), 0) AS BIGINT)
FROM pg_class AS c
WHERE c.relnamespace = CAST(current_schema() AS regnamespace) AND c.relkind = 'r'
"""


def sizes(db: Database) -> Sizes:
    """The database file's size and its write-ahead log's (0 for a file that is not there); on
    PostgreSQL, the size of the box's tables, and 0 for the log."""
    if db.dialect == "postgresql":
        row = db.read_one(_PG_BYTES)
        return Sizes(int(row[0]) if row is not None else 0, 0)
    return Sizes(_size(db.path), _size(Path(f"{db.path}-wal")))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

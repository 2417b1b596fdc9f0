"""The store on PostgreSQL (``INGRESS_BOX_DB=postgresql://...``): the same interface as
:class:`~ingress_box.store.db.Database`, so every store function runs on either.

Writes group-commit as on SQLite: one writer thread per process takes every op waiting, runs
them in one transaction (each in its own savepoint) and commits once, so a burst of webhooks
pays one commit, and nothing is acknowledged before its commit. ``synchronous_commit`` stays on
for batches that hold an acknowledged write and is turned off for the worker's bookkeeping
alone (``durable=False``), as ``synchronous=NORMAL`` is on SQLite.

Several processes, on several hosts, share one database. Every write transaction first takes
one transaction-level advisory lock (:data:`WRITE_LOCK`), PostgreSQL's counterpart of SQLite's
``BEGIN IMMEDIATE``: write transactions follow each other, so every rule the SQLite store keeps
by having one writer (a lane's rows in the order they were queued, one leased row per lane, a
read-then-write that nobody else interleaves) holds across processes as it is, and a batch
of a hundred webhooks still pays for one lock and one commit. Reads never take it. The
partial unique index ``outbox_one_lease_per_lane`` and the claims' ``FOR UPDATE SKIP LOCKED``
keep the lane rule even for a write that would not take the lock.

Parameters are written as for SQLite (``?`` and ``:name``); :class:`PgConn` gives them to
psycopg as ``%s`` and ``%(name)s``. Rows index by position and by name, like ``sqlite3.Row``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import SchemaTooNew, StorageUnavailable
from .db import LINGER_SECONDS, WAITED, Database, _Batch, _fail_all, _unavailable, _unexpired
from .sql import Dialect, Params

try:  # the PostgreSQL extra: pip install 'ingress-box[postgresql]'
    import psycopg
    from psycopg import pq
except ImportError:  # pragma: no cover - only a box without the extra
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# The version an empty database gets from postgres_schema.sql; later migrations are numbered
# after it, as for SQLite (store/migrations.py), each with its PostgreSQL text.
SCHEMA_VERSION = 7
# "This transaction writes": a transaction-level advisory lock keyed by a number of our own and
# the schema the box lives in, so two boxes in two schemas of one database (or two test runs)
# never wait for each other.
WRITE_LOCK = "SELECT pg_advisory_xact_lock(463208449, hashtext(current_schema()))"

_PARAM = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<!:):([A-Za-z_]\w*)|\?|%")


@functools.lru_cache(maxsize=1024)
def to_psycopg(sql: str) -> str:
    """``sql`` with SQLite's ``?`` and ``:name`` as psycopg's ``%s`` and ``%(name)s`` (quoted
    text and ``::`` casts left alone, every literal ``%`` doubled, quoted or not)."""

    def swap(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        if m.group(1) is not None:
            return f"%({m.group(1)})s"
        return text.replace("%", "%%")  # a quoted literal or name: psycopg parses it too

    return _PARAM.sub(swap, sql)


class PgRow(tuple[Any, ...]):
    """A row that indexes by position and by column name, like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


def _rows(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._names = names
        return row

    return make


class PgConn:
    """A psycopg connection that takes the store's SQL as SQLite's connection does."""

    dialect: Dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Params = (), /) -> Any:
        return self.raw.execute(to_psycopg(sql), parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        cur = self.raw.cursor()
        cur.executemany(to_psycopg(sql), parameters)
        return cur

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.info.transaction_status != pq.TransactionStatus.IDLE)

    def close(self) -> None:
        self.raw.close()


def _need_driver() -> None:
    if psycopg is None:
        raise StorageUnavailable(
            "PostgreSQL needs the driver: pip install 'ingress-box[postgresql]'"
        )


def connect(url: str, *, readonly: bool = False) -> PgConn:
    """A connection in autocommit mode (transactions are begun explicitly)."""
    _need_driver()
    try:
        raw = psycopg.connect(url, autocommit=True, row_factory=_rows)
    except psycopg.Error as exc:
        raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    if readonly:
        raw.execute("SET default_transaction_read_only = on")
    return PgConn(raw)


def schema_sql() -> str:
    return resources.files("ingress_box.store").joinpath("postgres_schema.sql").read_text("utf-8")


def schema_version(conn: PgConn) -> int | None:
    """The version recorded in the database, or None when it has none of our tables."""
    exists = conn.execute("SELECT to_regclass('ingress_box_schema')").fetchone()[0]
    if exists is None:
        return None
    row = conn.execute("SELECT max(version) FROM ingress_box_schema").fetchone()
    return int(row[0]) if row[0] is not None else None


def server_version(conn: PgConn) -> str:
    return str(conn.execute("SHOW server_version").fetchone()[0])


def migrate(conn: PgConn, name: str) -> int:
    """Give an empty database the schema; refuse one from a newer release."""
    conn.execute("BEGIN")
    try:
        conn.execute(WRITE_LOCK)
        version = schema_version(conn)  # under the lock: another process may have made it
        if version is None:
            conn.raw.execute(schema_sql())  # as written: no parameters to translate
            conn.execute("INSERT INTO ingress_box_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            version = SCHEMA_VERSION
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(name, version, SCHEMA_VERSION)
    return version


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


class PgDatabase(Database):
    """:class:`~ingress_box.store.db.Database` on PostgreSQL: the same queue, batches and
    deadlines (inherited); its own transactions, connections and reads."""

    dialect: Dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 5.0,
        readonly: bool = False,
        linger: float = LINGER_SECONDS,
    ) -> None:
        super().__init__(Path(), busy_timeout=busy_timeout, readonly=readonly, linger=linger)
        self.url = url
        self.name = redacted(url)
        self._preaders: list[PgConn] = []
        self._async_pg: Any = None
        self._async_lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> PgDatabase:
        """Give an empty database the schema, check a known one's version, start the writer."""
        conn = connect(self.url, readonly=self.readonly)
        try:
            if self.readonly:
                version = schema_version(conn)
                if version is None:
                    raise StorageUnavailable(f"{self.name} is not an ingress-box database")
                if version > SCHEMA_VERSION:
                    raise SchemaTooNew(self.name, version, SCHEMA_VERSION)
                conn.close()
                return self
            migrate(conn, self.name)
            self._limit_lock_wait(conn)
        except BaseException:
            conn.close()
            raise
        self._start_writer(conn)
        return self

    def _limit_lock_wait(self, conn: PgConn) -> None:
        # A batch waits for the write lock (another process's batch) no longer than an op may.
        conn.execute(f"SET lock_timeout = {max(1, int(self.busy_timeout * 1000))}")

    def close(self) -> None:
        super().close()
        with self._readers_lock:
            for conn in self._preaders:
                conn.close()
            self._preaders.clear()

    async def aopen(self) -> None:
        _need_driver()
        try:
            reader = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, row_factory=_rows
            )
        except psycopg.Error as exc:
            raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        await reader.execute("SET default_transaction_read_only = on")
        self._async_pg = reader
        self._async_lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self._async_pg is not None:
            await self._async_pg.close()
            self._async_pg = None

    # -- writes ----------------------------------------------------------------------------

    def _commit(self, conn: Any, batch: _Batch) -> None:
        # The lock's wait is bounded by lock_timeout: ops that waited in the queue past their
        # deadline fail before the transaction begins, on the lock when a batch ahead of them
        # timed out on it.
        batch.items = _unexpired(batch.items, time.monotonic(), self._locked or WAITED)
        if not batch.items:
            return
        # One round trip opens the transaction and takes the write lock.
        begin = "BEGIN; SET LOCAL synchronous_commit = off; " if not batch.durable else "BEGIN; "
        try:
            conn.raw.execute(f"{begin}{WRITE_LOCK}")
            self._locked = None
            self._run_batch(conn, batch)
        except psycopg.Error as exc:  # the transaction failed: nothing of it holds
            log.warning("PostgreSQL write failed: %s", exc)
            if isinstance(exc, psycopg.errors.LockNotAvailable):
                self._locked = exc
            _fail_all(batch, exc)
            self._recover(conn)
            return
        self._committed(batch)

    def _recover(self, conn: PgConn) -> None:
        """After a failed transaction: roll back, or reconnect when the connection is gone."""
        if not conn.raw.closed and not conn.raw.broken:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return
            except psycopg.Error:
                pass
        try:
            fresh = connect(self.url)
        except StorageUnavailable:
            return  # still gone: the next batch fails alike and tries again
        conn.close()
        conn.raw = fresh.raw
        self._limit_lock_wait(conn)

    def _check_transaction(self, conn: Any, exc: Exception) -> None:
        if conn.raw.broken:  # the connection is gone, and the transaction with it
            raise exc

    def _unavailable_errors(self) -> tuple[type[Exception], ...]:
        return (psycopg.OperationalError,)

    # -- reads -----------------------------------------------------------------------------

    def _pg_reader(self) -> PgConn:
        conn: PgConn | None = getattr(self._local, "pg", None)
        if conn is None or conn.raw.closed or conn.raw.broken:
            conn = connect(self.url, readonly=True)
            self._local.pg = conn
            with self._readers_lock:
                self._preaders.append(conn)
        return conn

    def read(self, sql: str, params: Params = ()) -> list[Any]:
        try:
            return list(self._pg_reader().execute(sql, params).fetchall())
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc

    async def aread(self, sql: str, params: Params = ()) -> list[Any]:
        if self._async_pg is None or self._async_lock is None:
            raise StorageUnavailable("the async reader is not open")
        try:
            async with self._async_lock:
                cur = await self._async_pg.execute(to_psycopg(sql), params)
                rows = await cur.fetchall()
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc
        return list(rows)


def tables(conn: PgConn) -> Iterator[str]:
    """Our tables, for tools that copy or check the whole database."""
    for row in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    ):
        yield row[0]

"""The SQLite file: one writer thread that group-commits, and readers.

Every write is a function ``op(conn) -> result`` handed to :meth:`Database.submit`. The writer
thread takes everything that is waiting, runs it in one ``BEGIN IMMEDIATE`` transaction (each op
inside its own savepoint, so one failing op does not undo the others) and commits once. With
``synchronous=FULL`` that is one fsync per batch, not per request, and one thread hop each way
per batch. A caller learns its result only after the commit: nothing is acknowledged that is not
durable.

Every op has a deadline, ``busy_timeout`` after it was submitted: an op still waiting for the
write lock then fails with :class:`~ingress_box.errors.StorageUnavailable`, however many
batches were blocked ahead of it (a batch waits for the lock only until the earliest deadline
among its ops, then fails those ops and tries again for the others). So a webhook learns that
the file is locked within the busy timeout of its arrival, not after every write queued before
it has waited its own. A file found damaged is remembered (:attr:`Database.damage`).

Opening brings the file to the schema this program knows (:mod:`.migrations`): an empty file
gets ``schema.sql``, an older one the migrations it lacks, each in its own transaction, and a
file from a newer release is refused (:class:`~ingress_box.errors.SchemaTooNew`).

Reads never wait for the writer (WAL): threads read through their own connection
(:meth:`Database.read`), coroutines through aiosqlite (:meth:`Database.aread`). A database
opened ``readonly`` (the CLI's pure reads) has no writer: its connections open the file with
``mode=ro``, so it reads a read-only copy of a backup, creates and migrates nothing, and never
takes the write lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ..config import DatabaseUrl
from ..errors import SchemaTooNew, StorageUnavailable
from .migrations import MIGRATIONS, Migration, latest, migrate, user_version
from .sql import Dialect

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]
Params = Sequence[Any] | dict[str, Any]

log = logging.getLogger(__name__)

MAX_BATCH = 512
# The writer's pauses between tries for a write lock another connection holds (another
# process's writer, huey's queue), the last one again until the batch's deadline (_begin).
LOCK_PAUSES = (0.0005, 0.001, 0.002)
# How long a batch of only lazy ops (an attempt's outcome) waits for other writes to join it.
LINGER_SECONDS = 0.005
_STOP = object()
_LOCK_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def schema_sql() -> str:
    return resources.files("ingress_box").joinpath("schema.sql").read_text(encoding="utf-8")


def read_only_uri(path: Path) -> str:
    """The URI that opens ``path`` for reading only (never creating it)."""
    return f"{Path(path).absolute().as_uri()}?mode=ro"


def connect(
    path: Path, synchronous: str, busy_timeout: float, *, readonly: bool = False
) -> sqlite3.Connection:
    """Open a connection with the PRAGMAs every connection of ours uses."""
    conn = sqlite3.connect(
        read_only_uri(path) if readonly else str(path),
        uri=readonly,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout,
    )
    conn.row_factory = sqlite3.Row
    if readonly:  # the journal mode is the file's business: setting it is a write
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


def writer_settings(conn: sqlite3.Connection) -> None:
    """What the writer's connection sets beyond :func:`connect`'s PRAGMAs."""
    # Its temporary storage in memory. With SQLite's default, big batches (a flood's accepts,
    # the indexer's 256 bodies) made it create, write and delete files in the system's
    # temporary folder, outside the data volume: several a second under a flood, where the
    # ingress then took 30-40 % fewer webhooks (README, Performance). Not for the migrations:
    # an index build may sort a whole table, and that may spill.
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA busy_timeout = 0")  # the writer waits for the lock its way: _begin


def lock_pauses() -> Iterator[float]:
    """The pauses between tries for a lock another connection holds: :data:`LOCK_PAUSES`,
    then the last of them again, for as long as the caller's deadline allows."""
    return itertools.chain(LOCK_PAUSES, itertools.repeat(LOCK_PAUSES[-1]))


def _unavailable(exc: BaseException | str) -> StorageUnavailable:
    return StorageUnavailable(f"database cannot commit: {exc}")


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF  # the primary code, not extended


# What the writer is handed: the caller's future, the op, whether it must be durable, the
# time.monotonic() after which it fails rather than wait any longer for the lock, and whether
# it may linger (see Database.submit).
_Item = tuple[concurrent.futures.Future[Any], Op[Any], bool, float, bool]


class _Batch:
    """The ops of one transaction and what each returned."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.durable = any(durable for _, _, durable, _, _ in items)
        self.outcomes: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []


class Database:
    dialect: Dialect = "sqlite"  # see store/sql.py: which SQL text a store function picks

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        migrations: Sequence[Migration] = MIGRATIONS,
        readonly: bool = False,
        linger: float = LINGER_SECONDS,
    ) -> None:
        if str(path).startswith(tuple(scheme.rstrip("/") for scheme in DatabaseUrl.SCHEMES)):
            # Path() folds the // of a URL: a file named after it would be made in the cwd.
            raise ValueError(f"{path} is a server's URL, not a file: open it with open_database")
        self.path = Path(path)
        self.name = str(self.path)  # what messages call the database
        self.linger = linger
        self.readonly = readonly
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.migrations = migrations
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._async_reader: aiosqlite.Connection | None = None
        self.on_commit: list[Callable[[int], None]] = []  # called with the batch size
        self._mode = synchronous  # the writer connection's synchronous setting right now
        self._locked: Exception | None = None  # why the last BEGIN failed, until one works
        # Why the file is known to be damaged (SQLite said so to a write), else None. Damage
        # does not heal: /readyz reports it until the process restarts on a repaired file.
        self.damage: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> Database:
        """Create or upgrade the file's schema if needed, and start the writer."""
        if self.readonly:
            self._check_readable()
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self.synchronous, self.busy_timeout)
        try:
            migrate(conn, schema_sql(), self.migrations, name=str(self.path))
        except BaseException:
            conn.close()
            raise
        writer_settings(conn)  # after the migrations: an index build may sort a whole table
        self._start_writer(conn)
        return self

    def _start_writer(self, conn: Any) -> None:
        """The writer thread, taking batches on ``conn`` until :meth:`close`."""
        self._writer = threading.Thread(
            target=self._run, args=(conn,), name="ingress-box-writer", daemon=True
        )
        self._writer.start()

    def _check_readable(self) -> None:
        """The file is one of ours, of a version this program knows; nothing is changed."""
        known = latest(self.migrations)
        try:
            conn = connect(self.path, self.synchronous, self.busy_timeout, readonly=True)
            try:
                version = user_version(conn)
                ours = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot read {self.path}: {exc}") from exc
        if version > known:
            raise SchemaTooNew(str(self.path), version, known)
        if ours is None:
            raise StorageUnavailable(f"{self.path} is not an ingress-box database")

    def close(self) -> None:
        """Finish what is queued, stop the writer and close every connection."""
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
            self._writer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()

    async def aopen(self) -> None:
        """Open the aiosqlite reader for coroutines (call from the event loop that uses it)."""
        where = read_only_uri(self.path) if self.readonly else str(self.path)
        reader = await aiosqlite.connect(where, uri=self.readonly, isolation_level=None)
        reader.row_factory = sqlite3.Row
        await reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        await reader.execute("PRAGMA query_only = ON")
        self._async_reader = reader

    async def aclose(self) -> None:
        if self._async_reader is not None:
            await self._async_reader.close()
            self._async_reader = None

    # -- writes ----------------------------------------------------------------------------

    def submit(
        self, op: Op[T], *, durable: bool = True, lazy: bool = False
    ) -> concurrent.futures.Future[T]:
        """Queue ``op`` for the next batch; the future resolves after the commit.

        ``durable=False`` says that losing this write to a power cut costs at most a repeated
        delivery attempt (the worker's claims and outcomes): a batch of only such ops commits
        with ``synchronous=NORMAL`` (no fsync; still safe against a process crash). Anything
        acknowledged to someone outside stays durable.

        ``lazy=True`` says nobody waits for the result soon (an attempt's outcome): a batch of
        only such ops may wait up to ``linger`` seconds for other writes to share its
        transaction, so a steady trickle of webhooks pays one transaction each, not two.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._writer is None:
            future.set_exception(StorageUnavailable("database is closed"))
            return future
        self._queue.put((future, op, durable, time.monotonic() + self.busy_timeout, lazy))
        return future

    def queued(self) -> int:
        """How many ops wait for the writer to take them (not those of the batch it runs)."""
        return self._queue.qsize()

    def write(self, op: Op[T], *, durable: bool = True) -> T:
        """Run ``op`` in the writer and wait for its commit (for threads)."""
        return self.submit(op, durable=durable).result()

    async def awrite(self, op: Op[T]) -> T:
        """Run ``op`` in the writer and wait for its commit (for coroutines)."""
        return await asyncio.wrap_future(self.submit(op))

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                items = [item]
                lazy = bool(item[4])  # only lazy ops so far: wait a little for company
                linger_until = time.monotonic() + self.linger
                stop = False
                while len(items) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        wait = linger_until - time.monotonic() if lazy else 0.0
                        if wait <= 0:
                            break
                        try:
                            item = self._queue.get(timeout=wait)
                        except queue.Empty:
                            break
                    if item is _STOP:
                        stop = True
                        break
                    items.append(item)
                    lazy = lazy and bool(item[4])
                self._commit(conn, _Batch(items))
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        lenient = not batch.durable and self.synchronous in ("FULL", "EXTRA")
        mode = "NORMAL" if lenient else self.synchronous
        try:
            if mode != self._mode:
                conn.execute(f"PRAGMA synchronous = {mode}")
                self._mode = mode
            batch.items = self._begin(conn, batch.items)
        except sqlite3.Error as exc:  # disk I/O error, a damaged file, ...
            self._note_damage(exc)
            _fail_all(batch, exc)
            return
        if not batch.items:  # every op's deadline passed while the file stayed locked
            return
        try:
            self._run_batch(conn, batch)
        except sqlite3.Error as exc:  # the transaction itself failed: nothing of it holds
            self._note_damage(exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _fail_all(batch, exc)
            return
        self._committed(batch)

    def _run_batch(self, conn: Any, batch: _Batch) -> None:
        """Run the ops of ``batch`` in the transaction open on ``conn``, and commit it."""
        # A lone op needs no savepoint: if it fails, rolling back the transaction undoes it.
        isolate = len(batch.items) > 1
        for future, op, _, _, _ in batch.items:
            if not future.set_running_or_notify_cancel():
                continue
            batch.outcomes.append((future, *self._run_op(conn, op, isolate)))
        if conn.in_transaction:  # not when a lone op failed and was rolled back
            conn.execute("COMMIT")

    def _committed(self, batch: _Batch) -> None:
        """Tell each op's caller its result, then the observers the batch's size."""
        for future, result, error in batch.outcomes:
            _settle(future, result, error)
        for callback in self.on_commit:
            try:
                callback(len(batch.outcomes))
            except Exception:  # an observer must never stop the writer
                log.exception("on_commit callback failed")

    def _begin(self, conn: sqlite3.Connection, items: list[_Item]) -> list[_Item]:
        """BEGIN IMMEDIATE, waiting for the lock no longer than the batch's earliest deadline;
        the ops whose deadline passed fail, the others wait on. The ops left to run.

        The writer's connection does not wait for the lock itself (its busy timeout is 0): it
        tries again here, after each pause of :data:`LOCK_PAUSES` and then every last one.
        SQLite's own wait sleeps 1, 2, 5, 10, 15, 20, 25 ms and on between tries, so behind
        another process's writer (``serve`` and ``ingress-box worker`` on one file) a batch
        slept tens of milliseconds for a lock held for one (README, Performance)."""
        # Ops whose deadline passed while a batch ahead waited for the lock failed on the lock too.
        locked: Exception | None = self._locked
        pauses = lock_pauses()
        while True:
            now = time.monotonic()
            items = _unexpired(items, now, locked or WAITED)
            if not items:
                return items
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._locked = None
                return items
            except sqlite3.OperationalError as exc:
                if _code(exc) not in _LOCK_CODES:
                    raise
                locked = self._locked = exc
            earliest = min(item[3] for item in items)
            time.sleep(max(min(next(pauses), earliest - time.monotonic()), 0.0))

    def _note_damage(self, exc: BaseException) -> None:
        if isinstance(exc, sqlite3.Error) and _code(exc) in _DAMAGE_CODES:
            self.damage = str(exc)

    def _run_op(
        self, conn: sqlite3.Connection, op: Op[Any], isolate: bool
    ) -> tuple[Any, BaseException | None]:
        """Run ``op``; if it fails, undo it (its savepoint, or the whole transaction when it
        runs alone) and return its error instead of its result."""
        if isolate:
            conn.execute("SAVEPOINT op")
        try:
            result = op(conn)
        except Exception as exc:  # noqa: BLE001 - any failure of an op is its caller's answer
            self._note_damage(exc)
            self._check_transaction(conn, exc)
            if isolate:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            else:
                conn.execute("ROLLBACK")
            if isinstance(exc, self._unavailable_errors()):
                return None, _unavailable(exc)
            return None, exc
        if isolate:
            conn.execute("RELEASE op")
        return result, None

    def _check_transaction(self, conn: Any, exc: Exception) -> None:
        """Raise when ``exc`` took the whole transaction with it, not only its op."""
        if not conn.in_transaction:  # SQLite rolled it all back (e.g. disk full)
            raise sqlite3.OperationalError(str(exc)) from exc

    def _unavailable_errors(self) -> tuple[type[Exception], ...]:
        """The errors that say the database cannot take the op now (not what the op did)."""
        return (sqlite3.OperationalError,)

    # -- reads -----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous, self.busy_timeout, readonly=self.readonly)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def read(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one query on this thread's read connection."""
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    def read_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = self.read(sql, params)
        return rows[0] if rows else None

    async def aread(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one query on the aiosqlite reader (coroutines)."""
        if self._async_reader is None:
            raise StorageUnavailable("the async reader is not open")
        try:
            rows = await self._async_reader.execute_fetchall(sql, params)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc
        return list(rows)

    async def aread_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.aread(sql, params)
        return rows[0] if rows else None


WAITED = "waited past the busy timeout for the writer"


def _unexpired(items: list[_Item], now: float, why: BaseException | str) -> list[_Item]:
    """The ops whose deadline has not passed; the others fail (``why``)."""
    for future, _, _, deadline, _ in items:
        if deadline <= now:
            _settle(future, None, _unavailable(why))
    return [item for item in items if item[3] > now]


def _fail_all(batch: _Batch, exc: BaseException) -> None:
    """Every op of a batch whose transaction did not commit fails (none was settled yet)."""
    for future, _, _, _, _ in batch.items:
        _settle(future, None, _unavailable(exc))


def _settle(
    future: concurrent.futures.Future[Any], result: Any, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

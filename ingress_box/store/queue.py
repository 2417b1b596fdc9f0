"""huey's queue in the box's own store: its SQLite storage in the same file, or its PostgreSQL
storage in the same database, each woken at once by an enqueue from this process and, for the
enqueues of other processes, by one waiting consumer thread (not each of them): on SQLite it
reads ``PRAGMA data_version`` (a counter SQLite bumps when another connection commits; no table
is read) and looks at the queue only when it moved: once a second in ``serve`` (its own
webhooks wake its worker directly), and in a worker that watches the outbox every 20 ms while
the file changes, up to every ``POLL_SECONDS`` (100 ms) while it does not. On PostgreSQL it
waits on a ``LISTEN`` connection for huey's notification of an enqueue.

On SQLite a worker may also watch the outbox (:meth:`SqliteQueue.watch`): when the poll sees
another connection's commit and no task, it asks whether a claim would find work, and if so
hands a consumer thread a drain of its own making. ``ingress-box worker`` does, so ``serve
--no-run-worker`` enqueues no drain per webhook (README, Performance).

On SQLite, huey's connection waits for another connection's write lock (the box's writer, the
other process's) as the box's writer does, in short steps (:class:`_PatientCursor`), not with
SQLite's own busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 50 then 100 ms between tries
while holding the storage's one lock, so every consumer thread of the process waited behind it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from huey.storage import PostgresStorage, SqliteStorage

from .db import _LOCK_CODES, _code, lock_pauses
from .postgres import WRITE_LOCK

# How often one idle consumer thread of a worker that watches the outbox (the split
# deployment's) looks for the commits of other processes: every 20 ms while the file changes
# (serve under traffic), doubling to every 100 ms while nothing commits (each look wakes a
# thread: ~0.2 ms of CPU on a small machine).
POLL_SECONDS = 0.1
POLL_MIN_SECONDS = 0.02
# How often one that does not watch looks: serve's own webhooks wake its worker directly, and
# what comes through the file is another process's enqueue (the CLI's redrive), rare and not
# urgent. Once a second, whatever moves (the file moves with every webhook serve takes).
QUIET_POLL_SECONDS = 1.0
# The longest an idle consumer thread waits before huey's loop goes round (and looks at the
# queue). Only a safety net: an enqueue here, the poll's finding and a stop (close_waits) wake
# it at once. Once a second, each of them touched the file for nothing: on a small machine a
# wake-up that reads SQLite after a second of sleep costs milliseconds of CPU, not
# microseconds (README, Performance: idle).
WAIT_SECONDS = 60.0
# How long the PostgreSQL poll waits on its LISTEN connection at a time. Every enqueue, this
# process's too, notifies it; only a stop (close_waits) must be seen otherwise, between two
# waits. Each wait that ends wakes a thread: 10 a second were about 1 % of a core.
LISTEN_SECONDS = 1.0
# huey's scheduler reads the schedule every second: on SQLite a ``BEGIN EXCLUSIVE`` transaction
# (the file's write lock) for a schedule that is nearly always empty. This process knows when
# the tasks it schedules fall due and reads the schedule only then, or this often in case
# another process scheduled one (the sweep would find its work within a minute anyway).
SCHEDULE_LOOK_SECONDS = 60.0


class _Waking:
    """A huey storage woken at once by an enqueue from this process, and by one waiting thread
    for the enqueues of other processes (:meth:`_poll`, per engine).

    ``_generation`` counts the enqueues seen (here, or through the poll). A thread that found
    the queue empty waits only if the count did not move since it looked, so no enqueue falls
    between its look and its wait.
    """

    blocking = True  # dequeue() waits itself, so huey's worker loop does not sleep on top

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changed = threading.Condition()
        self._generation = 0
        self._polling = False  # one waiting thread polls the file for all of them
        self._data_version: int | None = None
        self._interval = POLL_MIN_SECONDS
        self._closing = False
        self._found: Callable[[], bytes] | None = None  # a drain the poll made, for dequeue

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        super().enqueue(data, priority)  # type: ignore[misc]
        self._bump()

    def _bump(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def close_waits(self) -> None:
        """Let every waiting thread return now, and wait no longer than a poll from here on
        (huey's stop flag is checked between two dequeue calls)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def dequeue(self) -> bytes | None:
        if self._found is not None:  # read without the lock: taken under it
            with self._changed:
                found, self._found = self._found, None
            if found is not None:
                return found()
        seen = self._generation
        data: bytes | None = self._take()
        if data is not None:
            return data
        with self._changed:
            if self._generation != seen:
                return None  # an enqueue came meanwhile: look again at once
            if self._polling or self._closing:
                # The poller or an enqueue wakes this thread; the timeout only bounds a stop.
                self._changed.wait(POLL_MIN_SECONDS if self._closing else WAIT_SECONDS)
                return None
            self._polling = True
        try:
            self._poll(seen)
        finally:
            with self._changed:
                self._polling = False
                self._changed.notify()  # another waiting thread takes the poll over
        return None

    def _take(self) -> bytes | None:
        """A task from the queue, without waiting."""
        raise NotImplementedError

    def _poll(self, seen: int) -> None:
        raise NotImplementedError


class _PatientConnection(sqlite3.Connection):
    """huey's connection: no busy timeout of SQLite's; its cursors wait for a lock themselves."""

    lock_timeout = 5.0  # seconds a statement waits for another connection's lock

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _PatientCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)  # sqlite3's own takes a plain cursor


class _PatientCursor(sqlite3.Cursor):
    """Runs a statement again while another connection holds the lock it needs, after each
    pause of :func:`~ingress_box.store.db.lock_pauses`, until the connection's
    ``lock_timeout``. Only a statement outside a transaction is run again (huey's
    ``BEGIN EXCLUSIVE``, or a statement on its own): it did nothing when it failed, and inside
    huey's transaction the lock is held already."""

    connection: _PatientConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        conn = self.connection
        if conn.in_transaction:
            return super().execute(sql, parameters)
        deadline = time.monotonic() + conn.lock_timeout
        pauses = lock_pauses()
        while True:
            try:
                return super().execute(sql, parameters)
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if _code(exc) not in _LOCK_CODES or left <= 0:
                    raise
            time.sleep(min(next(pauses), left))


class SqliteQueue(_Waking, SqliteStorage):  # type: ignore[misc]
    """huey's SQLite storage; other processes' enqueues are seen by polling the file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._watch: tuple[Callable[[], bool], Callable[[], bytes]] | None = None
        self._schedule_lock = threading.Lock()
        self._next_due: float | None = None  # the earliest task in the schedule, as huey stores it
        self._look_at = 0.0  # monotonic: when to read the schedule anyway (0: at the first call)
        super().__init__(*args, factory=_PatientConnection, **kwargs)  # sqlite3.connect's

    def watch(self, ready: Callable[[], bool], drain: Callable[[], bytes]) -> None:
        """When the poll sees another connection's commit and no task, and ``ready()`` says
        there is work, a consumer thread runs ``drain()`` (a serialized task) as if it had been
        enqueued: the enqueues of the process that made the work are not needed."""
        self._watch = (ready, drain)

    def add_to_schedule(self, data: bytes, ts: datetime) -> None:
        with self._schedule_lock:
            super().add_to_schedule(data, ts)
            due = ts.timestamp()  # what huey stores and compares
            self._next_due = due if self._next_due is None else min(self._next_due, due)

    def read_schedule(self, ts: datetime) -> list[bytes]:
        """huey's read of the tasks due at ``ts``, made only when one of this process's is due
        or ``SCHEDULE_LOOK_SECONDS`` passed (huey's scheduler asks every second)."""
        with self._schedule_lock:
            due = self._next_due
            if time.monotonic() < self._look_at and (due is None or ts.timestamp() < due):
                return []
            tasks: list[bytes] = super().read_schedule(ts)
            rows = self.sql(
                "select min(timestamp) from schedule where queue = ?", (self.name,), results=True
            )
            self._next_due, self._look_at = rows[0][0], time.monotonic() + SCHEDULE_LOOK_SECONDS
            return tasks

    def _create_connection(self) -> sqlite3.Connection:
        conn = super()._create_connection()
        assert isinstance(conn, _PatientConnection)
        conn.execute("PRAGMA busy_timeout = 0")  # its cursors wait for a lock instead
        conn.lock_timeout = self._timeout
        return conn

    def _take(self) -> bytes | None:
        data: bytes | None = SqliteStorage.dequeue(self)
        return data

    def _poll(self, seen: int) -> None:
        """Wait until something is enqueued: here (a notify) or by another process (a commit
        that moved ``data_version`` and left a task in the queue), or ``WAIT_SECONDS`` passed
        (huey's loop looks at its stop flag between two dequeue calls)."""
        until = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < until:
            with self._changed:
                if self._generation != seen or self._closing:
                    return
                self._changed.wait(self._interval)
                if self._generation != seen or self._closing:
                    return
            # The version is read before the queue, so a commit after this read moves it again.
            version = self.sql("pragma data_version", results=True)[0][0]
            moved, self._data_version = version != self._data_version, version
            self._interval = self._next_interval(moved)
            if not moved:
                continue
            if self.sql("select 1 from task where queue = ? limit 1", (self.name,), results=True):
                self._bump()
                return
            if self._watch is not None and self._watch[0]():
                with self._changed:
                    self._found = self._watch[1]
                self._bump()
                return

    def _next_interval(self, moved: bool) -> float:
        if self._watch is None:
            return QUIET_POLL_SECONDS
        return POLL_MIN_SECONDS if moved else min(self._interval * 2, POLL_SECONDS)


class PostgresQueue(_Waking, PostgresStorage):  # type: ignore[misc]
    """huey's PostgreSQL storage; other processes' enqueues arrive as notifications
    (``LISTEN``) on one connection, used by whichever thread polls (one at a time).

    huey gives each thread a LISTEN connection of its own and leaves it to the garbage
    collector; here there is one per storage, closed with it (:meth:`close`), so a process
    holds two connections for its queue however many consumer threads it runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._listening: Any = None  # the LISTEN connection, opened by the first poll
        self._listening_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def initialize_schema(self) -> None:
        """huey's tables, made under the store's write lock: processes starting together would
        otherwise race in ``CREATE TABLE IF NOT EXISTS`` (PostgreSQL refuses the second)."""
        with self.db(commit=True, close=True) as cursor:
            cursor.execute(WRITE_LOCK)
            for statement in self.ddl:
                cursor.execute(statement)

    def _listen_conn(self) -> Any:
        with self._listening_lock:
            conn = self._listening
            if conn is not None and (conn.closed or conn.broken):  # the server went away
                self._close_quiet(conn)
                conn = None
            if conn is None:
                conn = self._connect()
                channel = self.channel.replace('"', '""')  # a quoted name, as huey quotes it
                conn.execute(f'LISTEN "{channel}"')
                self._listening = conn
            return conn

    def close(self) -> bool:
        with self._listening_lock:
            listening, self._listening = self._listening, None
        if listening is not None:
            self._close_quiet(listening)
        closed: bool = super().close()
        return closed

    def close_waits(self) -> None:
        """As on SQLite, and a notification so that the thread waiting on the LISTEN connection
        returns now rather than at the end of its wait: sent from a thread of its own, so a
        database that is gone holds no stop up (the wait then ends within LISTEN_SECONDS)."""
        super().close_waits()
        threading.Thread(target=self._notify, name="ingress-box-queue-wake", daemon=True).start()

    def _notify(self) -> None:
        import psycopg  # the PostgreSQL extra: only a box on PostgreSQL has this queue

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute("select pg_notify(%s, '')", (self.channel,))

    def _take(self) -> bytes | None:
        data: bytes | None = self._dequeue()
        return data

    def _poll(self, seen: int) -> None:
        """Wait for an enqueue here, a notification of one elsewhere, or ``WAIT_SECONDS``."""
        listening = self._listen_conn()
        if self._dequeue_peek():  # enqueued before the LISTEN began: not notified
            self._bump()
            return
        until = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < until:
            with self._changed:
                if self._generation != seen or self._closing:
                    return
            if list(listening.notifies(timeout=LISTEN_SECONDS, stop_after=1)):
                self._bump()
                return

    def _dequeue_peek(self) -> bool:
        found = self.sql(
            f"select 1 from {self.table_task} where queue = %s limit 1", (self.name,), results=True
        )
        return bool(found)

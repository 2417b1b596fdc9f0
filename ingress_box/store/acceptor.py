"""Group commit for the hot path: concurrent accepts share one writer op and one INSERT.

Requests that arrive while a flush is queued join it: the writer runs them as one multi-row
``INSERT OR IGNORE`` (see :func:`deliveries.accept_many`) in one transaction, and the event loop
hears back once per batch, after the commit. Statements, thread hops and GIL hand-overs are
paid per batch, not per request, which is what keeps ``synchronous=FULL`` cheap.

Each request says which instances version its checks were made against; the flush compares it
with the version in the same transaction and refuses (``None``) a request whose instance may
have changed meanwhile (a rotated secret, a disabled instance), so nothing is ever accepted on
stale configuration.

One request must never fail the others of its batch (they may be other instances' webhooks):
the batch runs inside a savepoint, and if anything of it fails, that savepoint is rolled back
and the requests run again one by one, each in its own savepoint, inside the same transaction.
Only the one that fails again hears of its error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import StorageUnavailable
from .db import Database
from .deliveries import NewDelivery, accept_many
from .instances import version_in

# Extra work for a new delivery, in the same transaction (e.g. learning a mapping).
AfterInsert = Callable[[sqlite3.Connection], None]
# What one request of a batch learns: new, duplicate, stale configuration (None), or its error.
Result = bool | None | BaseException


@dataclass
class _Waiting:
    delivery: NewDelivery
    after_insert: AfterInsert | None
    version: str
    future: asyncio.Future[tuple[bool | None, str]]


@dataclass
class _Flush:
    """One writer op: takes whatever is waiting when it runs."""

    acceptor: Acceptor
    taken: list[_Waiting] = field(default_factory=list)
    ran: bool = False

    def run(self, conn: sqlite3.Connection) -> tuple[list[Result], str]:
        self.ran = True
        self.acceptor._flush_queued = False  # later arrivals queue the next flush
        waiting = self.acceptor._waiting
        while waiting:
            self.taken.append(waiting.popleft())
        version = version_in(conn)
        current = [w for w in self.taken if w.version == version]
        try:
            with _savepoint(conn, "batch"):
                accepted: list[Result] = list(_accept(conn, current))
        except Exception:
            if not conn.in_transaction:  # SQLite gave up the whole transaction (disk full, ...)
                raise
            accepted = [_accept_alone(conn, item) for item in current]
        outcomes = iter(accepted)
        results = [next(outcomes) if w.version == version else None for w in self.taken]
        return results, version

    def resolve(self, done: concurrent.futures.Future[tuple[list[Result], str]]) -> None:
        """On the event loop, after the commit: answer every request of the batch."""
        error = done.exception()
        if error is not None and not self.ran:  # never reached the writer (it is closed)
            self.acceptor._flush_queued = False
            while self.acceptor._waiting:
                self.taken.append(self.acceptor._waiting.popleft())
        results, version = done.result() if error is None else ([None] * len(self.taken), "")
        for item, is_new in zip(self.taken, results, strict=True):
            if item.future.done():  # the request gave up waiting
                continue
            if error is not None:
                item.future.set_exception(error)
            elif isinstance(is_new, BaseException):
                item.future.set_exception(is_new)
            else:
                item.future.set_result((is_new, version))


def _accept(conn: sqlite3.Connection, items: Sequence[_Waiting]) -> list[bool]:
    """One multi-row insert for all of ``items``, then each new one's extra work."""
    inserted = accept_many(conn, [w.delivery for w in items])
    for item, is_new in zip(items, inserted, strict=True):
        if is_new and item.after_insert is not None:
            item.after_insert(conn)
    return inserted


def _accept_alone(conn: sqlite3.Connection, item: _Waiting) -> Result:
    """One request of a batch that failed: its own savepoint, its own outcome."""
    try:
        with _savepoint(conn, "one"):
            return _accept(conn, [item])[0]
    except sqlite3.OperationalError as exc:
        if not conn.in_transaction:
            raise
        return StorageUnavailable(f"database cannot commit: {exc}")
    except Exception as exc:
        if not conn.in_transaction:
            raise
        return exc


@contextlib.contextmanager
def _savepoint(conn: sqlite3.Connection, name: str) -> Iterator[None]:
    conn.execute(f"SAVEPOINT {name}")  # a name of ours, never input: no parameter needed
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


class Acceptor:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: deque[_Waiting] = deque()
        self._flush_queued = False

    async def accept(
        self, delivery: NewDelivery, version: str, after_insert: AfterInsert | None = None
    ) -> tuple[bool | None, str]:
        """Commit ``delivery`` with its outbox row if the instances are still at ``version``.

        Returns (True: new, False: duplicate, None: instances changed, nothing stored) and the
        instances version the transaction saw.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool | None, str]] = loop.create_future()
        self._waiting.append(_Waiting(delivery, after_insert, version, future))
        if not self._flush_queued:
            self._flush_queued = True
            flush = _Flush(self)
            self.db.submit(flush.run).add_done_callback(
                lambda done: _call_soon(loop, flush.resolve, done)
            )
        return await future


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(fn, *args)

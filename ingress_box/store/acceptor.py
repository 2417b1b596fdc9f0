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

With a :class:`Handoff` (a worker in this process with a drain waiting for work), the same
transaction also leases the new rows that are claimable at once, and the writer hands them to
the worker right after the commit: a webhook then costs no claim transaction and no wait for a
wake-up. Leased here or by a claim, a row is the same leased row (same lease, same attempt
count), so a crash before the attempt leaves it to the lease's expiry as always.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import StorageUnavailable
from .db import Database
from .deliveries import NewDelivery, accept_many
from .instances import version_in
from .outbox import Claimed, lease_new

# Extra work for a new delivery, in the same transaction (e.g. learning a mapping).
AfterInsert = Callable[[sqlite3.Connection], None]
# What one request of a batch learns: new, duplicate, stale configuration (None), or its error.
Result = bool | None | BaseException


class Handoff(Protocol):
    """A worker of this process that takes newly accepted rows from the accept transaction."""

    owner: str  # the lease owner, as in its claims
    lease_seconds: float

    def now(self) -> float: ...

    def wanted(self) -> int:
        """How many rows it would start on at once (0: leave them all to its claims)."""
        ...

    def take(self, rows: list[Claimed], left: int, version: str) -> None:
        """After the commit, in the writer thread: ``rows`` leased for it, how many new rows
        were left in the outbox for a claim (waiting behind their lane, or not wanted), and the
        instances version the transaction saw."""
        ...


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
    handed: list[Claimed] = field(default_factory=list)  # leased for the Handoff
    left: int = 0  # new rows not handed

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
                accepted: list[int | None | BaseException] = list(_accept(conn, current))
        except Exception:
            if not conn.in_transaction:  # SQLite gave up the whole transaction (disk full, ...)
                raise
            accepted = [_accept_alone(conn, item) for item in current]
        new = [(w, seq) for w, seq in zip(current, accepted, strict=True) if isinstance(seq, int)]
        if new and self.acceptor.handoff is not None:
            self._hand_off(conn, self.acceptor.handoff, new)
        outcomes = iter(accepted)
        results = [_result(next(outcomes)) if w.version == version else None for w in self.taken]
        return results, version

    def _hand_off(
        self, conn: sqlite3.Connection, handoff: Handoff, new: list[tuple[_Waiting, int]]
    ) -> None:
        chosen = new[: max(handoff.wanted(), 0)]
        self.left = len(new)
        if not chosen:
            return
        now = handoff.now()
        try:
            with _savepoint(conn, "handoff"):  # if it fails, the rows wait for a claim
                seqs = [seq for _, seq in chosen]
                leased = set(lease_new(conn, seqs, handoff.owner, now, handoff.lease_seconds))
        except Exception:
            if not conn.in_transaction:
                raise
            return
        until = now + handoff.lease_seconds
        self.handed = [Claimed(s, w.delivery.event(), until) for w, s in chosen if s in leased]
        self.left = len(new) - len(self.handed)

    def hand_over(self, done: concurrent.futures.Future[tuple[list[Result], str]]) -> None:
        """In the writer thread, after the commit: give the handed rows to the worker."""
        handoff = self.acceptor.handoff
        if handoff is not None and done.exception() is None and (self.handed or self.left):
            handoff.take(self.handed, self.left, done.result()[1])

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


def _result(seq: int | None | BaseException) -> Result:
    return seq if isinstance(seq, BaseException) else seq is not None


def _accept(conn: sqlite3.Connection, items: Sequence[_Waiting]) -> list[int | None]:
    """One multi-row insert for all of ``items``, then each new one's extra work; the new
    rows' seqs (None for a duplicate)."""
    inserted = accept_many(conn, [w.delivery for w in items])
    for item, seq in zip(items, inserted, strict=True):
        if seq is not None and item.after_insert is not None:
            item.after_insert(conn)
    return inserted


def _accept_alone(conn: sqlite3.Connection, item: _Waiting) -> int | None | BaseException:
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
        self.handoff: Handoff | None = None

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
            committed = self.db.submit(flush.run)
            committed.add_done_callback(flush.hand_over)  # first: the worker starts sooner
            committed.add_done_callback(lambda done: _call_soon(loop, flush.resolve, done))
        return await future


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(fn, *args)

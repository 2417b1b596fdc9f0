"""huey wiring: consumer threads drain the outbox; the outbox table remembers.

huey (its SQLite storage in the same file, or its PostgreSQL storage in the same database) only
executes:
- ``drain`` claims ready outbox rows (one at a time, up to 16 at once when there is a backlog)
  and delivers them until none is ready. It is safe to run any number of times in any number
  of processes: claims are atomic and leased.
- the ``sweep`` periodic task enqueues a drain every minute, so a lost trigger, an expired
  lease of a crashed process or a due retry is found again without a separate reconciler;
- ``maintenance`` (hourly) prunes what retention allows and checkpoints the WAL.

Hand-off: with an ingress in the same process, the accept transaction itself leases each new
row that is claimable at once for a drain idling here (see :mod:`ingress_box.store.acceptor`),
and the writer thread hands it over (:meth:`Worker.take`) right after the commit: no claim
transaction, no thread waiting on another. A drain claims from the outbox only when there may
be work it was not handed: rows left waiting behind their lane or not wanted, the next row of a
lane an outcome freed, a due retry, an explicit :meth:`Worker.wake`, or when huey runs it.

On serve's event loop (:meth:`Worker.attach_loop`), a handed row of a ``forward`` instance is
not given to a drain at all: it rides the ack's call back to the loop, which POSTs it with
:class:`~ingress_box.outbound.LoopPool` and records the outcome as a drain would. No thread is
woken and none blocks on the target: 40 % fewer context switches per webhook, 3-27 % less CPU
at 320-1,000 webhooks/s, a lower end-to-end p99 at 320/s (README). Drains keep other
handlers, claims, and every new row while a drain makes attempts (a backlog). Loop and drains share
``workers`` slots: at most that many attempts at once.

With ``INGRESS_BOX_ALERT_URL`` set, a worker that delivers also runs an
:class:`~ingress_box.alerts.Alerter`, told of each outcome once it is committed (``recorded``).

Wake-ups: :meth:`Worker.wake` says there is new work in the outbox (cheap, any thread). A drain
idling in this process takes the work at once; otherwise a small kicker thread turns the wake
into a huey task. The storage wakes this process's consumer threads as soon as a task is
enqueued here, and one idle consumer thread waits for the enqueues of other processes
(:mod:`ingress_box.store.queue`). A process
without a worker (the CLI after a redrive) calls :func:`wake_workers`, which only enqueues a
drain. On SQLite, ``ingress-box worker`` also watches the outbox (``watch_outbox``): the poll
that sees another process's commit starts a drain when a claim would find a row, so ``serve
--no-run-worker`` does not wake it per webhook (on PostgreSQL it does: huey's ``NOTIFY``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
from huey import Huey, crontab
from huey.consumer import Consumer

from .alerts import Alerter
from .attempt import Attempts
from .config import DatabaseUrl, Settings
from .errors import StorageUnavailable
from .outbound import LoopPool, Pool
from .retry import Decision
from .store import Database, retention
from .store import instances as store_instances
from .store import outbox as store_outbox
from .store.queue import POLL_MIN_SECONDS, PostgresQueue, SqliteQueue
from .store.sql import DATABASE_ERRORS

log = logging.getLogger("ingress_box.worker")

SHORT_WAIT_SECONDS = 1.0  # a retry due sooner than this is waited for in the drain itself
MAX_CLAIM = 16  # rows one drain leases at once when there is a backlog
MAX_UNSETTLED = MAX_CLAIM  # attempts a drain may have made whose outcomes are not committed
IDLE_SECONDS = 1.0  # with an ingress in this process: how long an idle drain waits for it
STRANDED_SECONDS = 0.1  # how long handed rows may wait for a drain of this process to start
SWEEP = crontab()  # when huey runs the sweep: every minute
MAINTENANCE = crontab(minute="7")  # and the maintenance: hourly, by the wall clock


class _QuietConsumer(Consumer):  # type: ignore[misc]
    """A consumer that leaves signal handling to its host (uvicorn, or the ``worker`` command)."""

    def _set_signal_handlers(self) -> None:
        pass


def make_huey(settings: Settings) -> Huey:
    if isinstance(settings.db_path, DatabaseUrl):  # huey's tables in the same database
        return Huey("ingress-box", results=False, storage_class=PostgresQueue, dsn=settings.db_path)
    # fsync off for huey's own connections: a lost task only delays (the outbox remembers).
    return Huey(
        "ingress-box",
        results=False,
        storage_class=SqliteQueue,
        filename=str(settings.db_path),
        fsync=False,
        timeout=settings.busy_timeout_seconds,
    )


def wake_workers(settings: Settings) -> bool:
    """Ask the workers on ``settings.db_path``, in whatever process, to drain now.

    For a process that made work without a :class:`Worker` of its own (the CLI's redrive while
    ``serve`` runs): it enqueues one ``drain`` in the file's huey queue, unless one is queued
    already, and starts no consumer. A consumer polling the file takes it within a second
    (``serve``'s; a split deployment's worker within ``POLL_SECONDS``); with none running, the
    next one to start does (a drain finding nothing is harmless). False when the queue could
    not be written; the minute sweep finds the work then.
    """
    huey = make_huey(settings)
    try:
        if huey.pending_count() == 0:
            huey.task(name="drain")(_drain_elsewhere)()
        return True
    except DATABASE_ERRORS as exc:
        log.warning("could not wake the workers: %s", exc)
        return False
    finally:
        huey.storage.close()


def _drain_elsewhere() -> None:
    """Never runs here: only the message's name (this module's ``drain``) matters, and the
    consumer that takes it runs its own Worker's drain."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        idle_seconds: float = 0.0,
        watch_outbox: bool = False,
    ) -> None:
        """``idle_seconds``: how long a drain with nothing to do waits for a wake() before it
        ends; worth it only where the ingress runs in the same process and calls wake().
        ``watch_outbox``: on SQLite, start a drain when another process's commit left a row to
        claim, with no task enqueued (``ingress-box worker``; see store.queue)."""
        self.settings = settings
        self.db = db
        self.clock = clock
        self.rng = rng or random.Random()
        self.idle_seconds = idle_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        limits = httpx.Limits(
            max_connections=settings.workers * 2, max_keepalive_connections=settings.workers * 2
        )
        # forward's own client; ``transport`` (a fake network in tests) is the httpx client's.
        self.outbound = Pool(max_idle=settings.workers * 2)
        self.client = httpx.Client(
            transport=transport,
            limits=limits,
            follow_redirects=False,
            timeout=settings.delivery_timeout_seconds,
        )
        self.huey = make_huey(settings)
        self.instances = store_instances.InstanceCache(db)
        self.attempts = Attempts(
            settings, db, self.instances, self.client, self.outbound, clock=clock, rng=self.rng
        )
        self._drain = self.huey.task(name="drain")(self.drain)
        if watch_outbox and isinstance(self.huey.storage, SqliteQueue):
            self.huey.storage.watch(
                self._claimable, lambda: self.huey.serialize_task(self._drain.s())
            )
        self.huey.periodic_task(SWEEP, name="sweep")(self.sweep)
        self.huey.periodic_task(MAINTENANCE, name="maintenance")(self.maintenance)
        self.consumer: Consumer | None = None
        self._stopping = threading.Event()
        self._kick = threading.Event()
        self._kicker: threading.Thread | None = None
        self._active = 0
        self._delivering = 0  # drains making attempts now (not idling, claiming or ending)
        self._active_lock = threading.Lock()
        self._scheduled_for: float | None = None  # when the drain huey holds for later runs
        self._idle = threading.Condition()  # drains waiting for work, woken one per wake()
        self._idling = 0
        self._handed: collections.deque[store_outbox.Claimed] = collections.deque()
        self._more = False  # the outbox may hold claimable work no drain was handed
        self._unsettled = threading.local()  # per drain thread: its last outcomes' futures
        # Attempts in flight, on drains and on the loop: at most ``workers`` at once.
        self._slots = threading.BoundedSemaphore(settings.workers)
        self._loop: asyncio.AbstractEventLoop | None = None  # see attach_loop
        self._loop_pool: LoopPool | None = None
        self._loop_tasks: set[asyncio.Task[None]] = set()
        self._loop_unsettled = 0  # rows the loop took whose outcome is not committed yet
        self.lease_seconds = settings.lease_seconds
        self.observers: list[Callable[[store_outbox.Claimed, Decision, float], None]] = []
        # Told once an outcome is committed, in the writer's thread: each must be quick.
        self.recorded: list[Callable[[store_outbox.Claimed, Decision], None]] = []
        self.alerter = Alerter(settings, db, clock=clock) if settings.alert_url else None
        if self.alerter is not None:
            self.recorded.append(self.alerter.observe)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, *, consume: bool = True) -> None:
        """Start delivering; with ``consume=False`` only wake the workers of other processes
        (``serve --no-run-worker`` beside ``ingress-box worker``)."""
        logging.getLogger("huey").setLevel(logging.WARNING)
        if consume:
            self.consumer = _QuietConsumer(
                self.huey,
                workers=self.settings.workers,
                worker_type="thread",
                periodic=True,
                initial_delay=POLL_MIN_SECONDS,
                backoff=1.0,
                max_delay=POLL_MIN_SECONDS,
                scheduler_interval=1,
                check_worker_health=False,
            )
            self.consumer.start()
            if self.alerter is not None:  # alerts come from the processes that deliver
                self.alerter.start()
        self._kicker = threading.Thread(
            target=self._kick_loop, name="ingress-box-kicker", daemon=True
        )
        self._kicker.start()
        self.wake()  # whatever is pending from before a restart

    def stop(self, timeout: float = 12.0) -> None:
        """Stop taking work, let in-flight deliveries finish (bounded), release the rest."""
        self._stopping.set()
        self._kick.set()
        self.huey.storage.close_waits()
        with self._idle:
            self._idle.notify_all()
        if self.consumer is not None:
            self.consumer.shutdown_timeout = timeout
            self.consumer.stop(graceful=True)
        if self._kicker is not None:
            self._kicker.join(timeout=1.0)
        self.huey.storage.close()  # its connections, the LISTEN ones too
        if self.alerter is not None:
            self.alerter.stop()
        try:
            released = self.db.write(store_outbox.release(self.owner))
            if released:
                log.info("released %d leases", released)
        except StorageUnavailable as exc:  # they expire on their own after the lease time
            log.warning("could not release leases: %s", exc)
        self.client.close()
        self.outbound.close()

    def alive(self) -> bool:
        if self._kicker is None or self._stopping.is_set():
            return False
        threads = [self._kicker]
        if self.consumer is not None:
            threads += [t for _, t in self.consumer.worker_threads] + [self.consumer.scheduler]
        return all(t.is_alive() for t in threads)

    def wake(self) -> None:
        """Say there is new work in the outbox (cheap; safe from the event loop).

        A drain idling in this process takes it at once; otherwise the kicker asks huey for one.
        """
        with self._idle:
            self._more = True
            if self._idling:
                self._idle.notify()
                return
        self._kick.set()

    # -- the hand-off from the accept transaction (store.acceptor.Handoff) ------------------

    def now(self) -> float:
        return self.clock()

    def wanted(self) -> int:
        """Rows this worker would start next: one per running drain, idle or busy (a busy one
        takes its row after the attempt it is making; :meth:`take` starts another drain when
        none idles), and up to ``workers`` on the event loop when it takes rows. Read without the
        lock: a hint."""
        if self._stopping.is_set() or self.consumer is None:
            return 0
        on_loop = self.settings.workers if self._loop_takes_rows() else 0
        return max(self._active - len(self._handed), 0) + on_loop

    def take(self, rows: list[store_outbox.Claimed], left: int, version: str) -> None:
        """Rows leased for this worker by an accept that committed (in the writer thread)."""
        self.instances.reset(version)  # what the accept checked against: current as of now
        loop = self._loop
        on_loop, rows = self._split_for_loop(rows)
        if on_loop:
            assert loop is not None
            loop.call_soon_threadsafe(self._start_on_loop, on_loop)
        if rows or left:
            self._hand_to_drains(rows, left)

    def _hand_to_drains(self, rows: list[store_outbox.Claimed], left: int) -> None:
        with self._idle:
            self._handed.extend(rows)
            self._more = self._more or left > 0
            wanted = len(rows) + (1 if left else 0)
            woken = min(wanted, self._idling)
            self._idle.notify(woken)
        if woken < wanted:
            self._kick.set()

    def _kick_loop(self) -> None:
        while not self._stopping.is_set():
            self._kick.wait()
            self._kick.clear()
            if self._stopping.is_set():
                return
            self._ensure_drains()
            if self._stranded():
                try:
                    self.drain()  # here, in this thread: the rows are leased to this process
                except Exception:  # as huey would for a task: logged, and the kicker goes on
                    log.exception("a drain of handed rows failed")

    def _stranded(self) -> bool:
        """Whether rows handed to this process's drains still wait with no drain here to take
        them, :data:`STRANDED_SECONDS` after a drain was asked for. huey's queue may be shared
        with other processes (PostgreSQL, or several on one file), and the drain it runs can
        start in any of them; the rows' lease is this process's, so none would take them until
        it ran out, and then two would deliver them."""
        if not self._handed_and_no_drain():
            return False  # the usual case: a drain here takes them
        if self._stopping.wait(STRANDED_SECONDS):
            return False
        return self._handed_and_no_drain()

    def _handed_and_no_drain(self) -> bool:
        with self._idle:
            handed = bool(self._handed)
        with self._active_lock:
            return handed and self._active == 0

    def _ensure_drains(self) -> None:
        """Enqueue one more drain unless ``workers`` run or one is queued already.

        One at a time: a drain that finds a backlog wakes the next (see drain), so a burst
        ramps up to ``workers`` while a trickle costs one drain, not ``workers`` of them.
        """
        try:
            if self._active < self.settings.workers and self.huey.pending_count() == 0:
                self._drain()
        except DATABASE_ERRORS as exc:  # the periodic sweep tries again
            log.warning("could not enqueue a drain: %s", exc)

    # -- tasks -----------------------------------------------------------------------------

    def sweep(self) -> None:
        self._ensure_drains()

    def _claimable(self) -> bool:
        """Whether a drain would find a row now (for the queue's watch of the file)."""
        try:
            return store_outbox.claimable(self.db, self.clock())
        except StorageUnavailable:  # the next change of the file, or the sweep, looks again
            return False

    def maintenance(self) -> None:
        retention.run(self.db, self.settings, self.clock())

    def drain(self) -> None:
        with self._active_lock:
            self._active += 1
        limit = 1
        look = True  # huey runs a drain to look in the outbox: it does so first
        try:
            while not self._stopping.is_set():
                handed = self._next_handed()
                if handed is not None:
                    self._deliver_claimed([handed])
                    continue
                more = self._take_more()  # the claim below covers what was flagged so far
                if not (look or more):
                    if not self._wait_for_work():
                        return
                    continue
                self.instances.refresh()  # a changed target or secret applies from this claim on
                claimed = self.db.write(
                    store_outbox.claim(self.owner, self.clock(), self.lease_seconds, limit),
                    durable=False,
                )
                look = bool(claimed)  # claim again until the outbox has nothing ready
                if not claimed:
                    if not self._wait_for_next_due():
                        return
                    limit = 1
                    continue
                if len(claimed) == limit:
                    self.wake()  # there may be more: let another drain help
                # A full claim means a backlog: take more at once (fewer transactions per
                # delivery); a partial one means the backlog is gone: back to one at a time.
                limit = min(limit * 2, MAX_CLAIM) if len(claimed) == limit else 1
                self._deliver_claimed(claimed)
        finally:
            with self._active_lock:
                self._active -= 1

    def _next_handed(self) -> store_outbox.Claimed | None:
        with self._idle:
            return self._handed.popleft() if self._handed else None

    def _take_more(self) -> bool:
        with self._idle:
            more, self._more = self._more, False
            return more

    def _wait_for_work(self) -> bool:
        """Idle until rows are handed over or the outbox has more (False: end the drain)."""
        if self.idle_seconds <= 0:
            return False
        deadline = time.monotonic() + self.idle_seconds
        with self._idle:
            # Woken, it may find the work gone to a drain that finished an attempt meanwhile:
            # it waits on. Ending early made the next webhook start a drain through huey's
            # queue (a write, a poll, a claim that found nothing): 80 of them in 5 s at 320/s.
            while not (self._handed or self._more or self._stopping.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idling += 1
                try:
                    self._idle.wait(left)
                finally:
                    self._idling -= 1
            return bool(self._handed or self._more) and not self._stopping.is_set()

    def _deliver_claimed(self, rows: list[store_outbox.Claimed]) -> None:
        margin = 3 * self.settings.delivery_timeout_seconds
        attempted = 0
        with self._active_lock:
            self._delivering += 1
        try:
            for row in rows:
                # Never start an attempt that could outlive its lease (another worker could
                # claim the row and deliver it twice): give the rest back. The first goes
                # unless its lease already ran out (a handed row that waited too long: another
                # process may hold it now).
                now = self.clock()
                late = now + margin > row.lease_until
                if now >= row.lease_until or (attempted and (self._stopping.is_set() or late)):
                    break
                attempted += 1
                self._await_earlier_outcomes()
                self.deliver(row)
        finally:  # also when something escaped: what was not attempted goes back at once
            with self._active_lock:
                self._delivering -= 1
            if attempted < len(rows):
                self.db.submit(
                    store_outbox.release(self.owner, [r.seq for r in rows[attempted:]]),
                    durable=False,
                ).add_done_callback(_log_settle_failure)

    def _wait_for_next_due(self) -> bool:
        """Nothing is ready: wait for a retry due soon or for new work; False to end the drain.

        A retry due later is left to a huey task scheduled for then (one per due time). The
        drain idles a little before it ends, so the next webhook is taken without a round trip
        through huey's queue.
        """
        due = store_outbox.next_due(self.db)
        now = self.clock()
        if due is not None and due - now <= SHORT_WAIT_SECONDS:
            self._stopping.wait(max(due - now, 0.005))
            with self._idle:
                self._more = True  # it is due now
            return True
        if due is not None:
            with self._active_lock:
                if (
                    self._scheduled_for is None
                    or self._scheduled_for < now
                    or (due < self._scheduled_for)
                ):
                    self._drain.schedule(delay=due - now)
                    self._scheduled_for = due
        return self._wait_for_work()

    def deliver(self, row: store_outbox.Claimed) -> None:
        """Make one attempt, tell the observers, and record its outcome."""
        with self._slots:
            outcome, decision, duration = self.attempts.make(row, self.owner)
        self._unsettled_of_this_drain().append(self._record(row, outcome, decision, duration))

    def _record(
        self,
        row: store_outbox.Claimed,
        outcome: store_outbox.Outcome,
        decision: Decision,
        duration: float,
    ) -> concurrent.futures.Future[Any]:
        """Tell the observers, and queue the outcome for the writer; its future."""
        # Observers first: once a reader can see the outcome in the database, the counters
        # already show it (a done callback would run after the commit, leaving a window).
        try:
            for observe in self.observers:
                observe(row, decision, duration)
        finally:  # an observer that fails must not cost the outcome
            # Not waited for (lazy: it may share the next accept's transaction); the next
            # claim of this thread queues behind it in the writer. Once it commits, the lane's
            # next row (or this one, retried) may be claimable.
            lane = store_outbox.lane_of(row.event, self.db.dialect)
            future = self.db.submit(
                store_outbox.record_outcome_and_peek(outcome, lane, self.clock()),
                durable=False,
                lazy=True,
            )
            future.add_done_callback(self._outcome_committed)
            for recorded in self.recorded:
                future.add_done_callback(partial(_tell_recorded, recorded, row, decision))
        return future

    # -- attempts on the event loop (serve) ------------------------------------------------

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attempt handed rows of ``forward`` instances on ``loop`` (serve's, which runs the
        ingress): the target is awaited there, so a webhook wakes no drain thread and no thread
        blocks on the network. Drains keep the rest: other handlers, claims (retries, a lane's
        next row, a backlog), and any row that finds every slot busy."""
        self._loop = loop
        self._loop_pool = LoopPool(max_idle=self.settings.workers * 2)

    def _split_for_loop(
        self, rows: list[store_outbox.Claimed]
    ) -> tuple[list[store_outbox.Claimed], list[store_outbox.Claimed]]:
        """The rows the loop attempts (each holds a slot from now on, and counts as unsettled
        until its outcome is committed), and the others."""
        if not self._loop_takes_rows():
            return [], rows
        mine: list[store_outbox.Claimed] = []
        others: list[store_outbox.Claimed] = []
        for row in rows:
            instance = self.instances.get(row.event.plugin, row.event.instance)
            if (
                instance is not None
                and instance.handler == "forward"
                # as many outcomes ahead of the file as one drain may run (a crash repeats them)
                and self._loop_unsettled + len(mine) < MAX_UNSETTLED
                and self._slots.acquire(blocking=False)
            ):
                mine.append(row)
            else:
                others.append(row)
        with self._active_lock:
            self._loop_unsettled += len(mine)
        return mine, others

    def _loop_takes_rows(self) -> bool:
        """Only while no drain makes attempts (one idling, claiming or ending does not count: it
        is not working a backlog): a drain working a backlog claims rows by the dozen,
        and a loop saturated with requests would hold its slots long (under wrk -c64 with the
        loop taking rows too, 14 % fewer were delivered)."""
        return self._loop is not None and not self._stopping.is_set() and not self._delivering

    def _loop_row_settled(self, _future: Any = None) -> None:  # any thread
        with self._active_lock:
            self._loop_unsettled -= 1

    def _start_on_loop(self, rows: list[store_outbox.Claimed]) -> None:
        loop = asyncio.get_running_loop()
        for row in rows:
            if self._stopping.is_set():  # stop() releases its lease
                self._slots.release()
                self._loop_row_settled()
                continue
            task = loop.create_task(self._attempt_on_loop(row))
            self._loop_tasks.add(task)
            task.add_done_callback(self._loop_tasks.discard)

    async def _attempt_on_loop(self, row: store_outbox.Claimed) -> None:
        assert self._loop_pool is not None
        try:
            made = await self.attempts.forward_on_loop(row, self.owner, self._loop_pool)
        except BaseException:  # cancelled at shutdown: stop() releases its lease
            self._loop_row_settled()
            raise
        finally:
            self._slots.release()
        if made is None:  # the instance no longer forwards: its handler runs on a drain
            self._loop_row_settled()
            self._hand_to_drains([row], 0)
            return
        self._record(row, *made).add_done_callback(self._loop_row_settled)

    async def stop_on_loop(self, grace: float = 12.0) -> None:
        """Stop handing rows to the loop and let its attempts in flight end (bounded); then
        :meth:`stop` does the rest. Those still running after ``grace`` seconds are cancelled:
        their rows are released, delivered again later."""
        self._stopping.set()
        if self._loop_tasks:
            _, late = await asyncio.wait(set(self._loop_tasks), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._loop_pool is not None:
            self._loop_pool.close()
        self._loop = None

    def _unsettled_of_this_drain(self) -> collections.deque[Any]:
        """The futures of this thread's last outcomes, oldest first (at most MAX_UNSETTLED)."""
        found: collections.deque[Any] | None = getattr(self._unsettled, "futures", None)
        if found is None:
            found = self._unsettled.futures = collections.deque(maxlen=MAX_UNSETTLED)
        return found

    def _await_earlier_outcomes(self) -> None:
        """Before an attempt: this thread's outcomes but the last MAX_UNSETTLED - 1 are
        committed.

        Outcomes are group-committed with whatever the writer does next (the next accepts,
        usually), so a drain does not wait for a commit per delivery; it runs at most
        MAX_UNSETTLED outcomes ahead of the file, as a claim of MAX_CLAIM rows would. A crash
        repeats at most that many deliveries per drain.
        """
        unsettled = self._unsettled_of_this_drain()
        if len(unsettled) == MAX_UNSETTLED:
            concurrent.futures.wait([unsettled[0]], timeout=self.settings.busy_timeout_seconds + 1)

    def _outcome_committed(self, future: Any) -> None:
        if future.exception() is not None:  # the lease expires and the row is delivered again
            log.error("could not record a delivery outcome: %s", future.exception())
        elif future.result():
            self.wake()


def _tell_recorded(
    recorded: Callable[[store_outbox.Claimed, Decision], None],
    row: store_outbox.Claimed,
    decision: Decision,
    future: Any,
) -> None:
    if future.exception() is None:
        recorded(row, decision)


def _log_settle_failure(future: Any) -> None:
    if future.exception() is not None:  # the lease expires and the row is delivered again
        log.error("could not record a delivery outcome: %s", future.exception())

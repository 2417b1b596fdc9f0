"""Alerts: a signed POST to ``INGRESS_BOX_ALERT_URL`` when an instance starts failing or recovers.

``instance.failing`` goes out when an instance's target has failed
``INGRESS_BOX_ALERT_AFTER_FAILURES`` attempts in a row, or an attempt dead-lettered its delivery;
``instance.recovered`` when an attempt succeeds after that. A run of failures or a dead letter
that was over before the box looked (a short outage, or one while no alerting process ran) is
still one ``instance.failing``, followed at once by its ``instance.recovered``. What happened
before alerts were turned on is not alerted. The body is
Standard Webhooks' envelope, signed with ``INGRESS_BOX_ALERT_SECRET``
(:mod:`ingress_box.signing`)::

    {"type": "instance.failing", "timestamp": "2026-12-01T18:00:00Z",
     "data": {"plugin", "instance", "health": {...}, "reason"}}

The database decides: an alert is sent only by the process whose transaction changed the
instance's row in ``instance_alerts`` (:func:`ingress_box.store.health.claim_due`), so two
workers never send one twice, and a restart neither repeats an alert nor misses a recovery
(the first look after the start finds it). At most one per change: a crash between the claim
and the POST loses that alert rather than repeat it.

Off the delivery path: the worker tells :meth:`Alerter.observe` of each committed outcome (a
set lookup and, for a failure, an event set; nothing waits), and one thread of its own looks at
the database, claims and sends, retrying a POST :data:`TRIES` times with doubling waits. One
that cannot be sent is logged. The thread also looks every :data:`CHECK_SECONDS` without being
told, for a change another process's attempt made.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from . import instance_health, outbound
from .config import Settings
from .retry import Decision
from .signing import sign
from .store import Database
from .store import health as store_health
from .store import instances as store_instances
from .store.outbox import Claimed

log = logging.getLogger("ingress_box.alerts")

CHECK_SECONDS = 30.0  # the longest between two looks at the database
GAP_SECONDS = 0.2  # the shortest: a target failing under load costs a few reads a second
TRIES = 4
BACKOFF_SECONDS = 1.0  # before the second try; doubled before each later one
MAX_ANSWER_BYTES = 4096


class Alerter:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        assert settings.alert_url and settings.alert_secret  # Settings refuses one without other
        self.url = settings.alert_url
        self.secret = str(settings.alert_secret)
        self.after = settings.alert_after_failures
        self.timeout = settings.delivery_timeout_seconds
        self.db = db
        self.clock = clock
        self.backoff = backoff
        self.pool = outbound.Pool(max_idle=1)
        self._poke = threading.Event()
        self._stopping = threading.Event()
        self._failing: set[store_health.Key] = set()  # alerted failing: a success may recover
        self._failed: set[store_health.Key] = set()  # failed since their last success (here)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.db.write(store_health.baseline(self.clock()))
        self._thread = threading.Thread(target=self._run, name="ingress-box-alerts", daemon=True)
        self._thread.start()
        self._poke.set()  # a change made while no process was looking

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.pool.close()

    def observe(self, row: Claimed, decision: Decision) -> None:
        """Called once an attempt's outcome is committed (in the database's writer thread)."""
        key = (row.event.plugin, row.event.instance)
        if decision.outcome != "delivered":
            self._failed.add(key)
            self._poke.set()
        elif key in self._failed or key in self._failing:
            self._failed.discard(key)
            self._poke.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._poke.wait(CHECK_SECONDS)
            self._poke.clear()
            if self._stopping.is_set():
                return
            try:
                if self.check():
                    self._poke.set()  # a failing just sent may be a recovery already
            except Exception:  # noqa: BLE001 (a locked or damaged file: the next look retries)
                log.exception("could not look for instance alerts")
            self._stopping.wait(GAP_SECONDS)

    def check(self) -> list[store_health.Change]:
        """Claim and send every alert that is due now; the changes, sent or not."""
        changes: list[store_health.Change] = []
        if store_health.due(self.db, self.after):
            changes = self.db.write(store_health.claim_due(self.after, self.clock()))
        self._failing = store_health.alerted_failing(self.db)
        for change in changes:
            self._send(change)
        return changes

    def body(self, change: store_health.Change) -> bytes | None:
        """The alert about ``change`` with the instance's health now (None: it is gone)."""
        inst = store_instances.get(self.db, change.plugin_id, change.instance_id)
        if inst is None:
            return None
        now = self.clock()
        (found,) = instance_health.of(self.db, [inst], now).values()
        document = {
            "type": f"instance.{change.state}",
            "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
            "data": {
                "plugin": change.plugin_id,
                "instance": change.instance_id,
                "health": found.to_json(),
                "reason": _reason(change, found.record),
            },
        }
        return json.dumps(document).encode()

    def _send(self, change: store_health.Change) -> None:
        body = self.body(change)
        if body is None:
            return
        what = f"instance.{change.state} about {change.plugin_id}/{change.instance_id}"
        msg_id = "alert_" + uuid.uuid4().hex  # the same on every try, so a receiver can dedup
        problem = ""
        for attempt in range(TRIES):
            if attempt and self._stopping.wait(self.backoff * 2 ** (attempt - 1)):
                break
            timestamp = int(self.clock())
            headers = [
                (b"content-type", b"application/json"),
                (b"webhook-id", msg_id.encode()),
                (b"webhook-timestamp", str(timestamp).encode()),
                (b"webhook-signature", sign(msg_id, timestamp, body, self.secret).encode()),
            ]
            try:
                answer = self.pool.post(self.url, headers, body, self.timeout, MAX_ANSWER_BYTES)
            except outbound.OutboundError as exc:
                problem = str(exc) or type(exc).__name__
                continue
            if 200 <= answer.status < 300:
                log.info("sent alert %s", what)
                return
            problem = f"HTTP {answer.status}"
        log.error("alert %s not sent: %s", what, problem or "stopping")


def _reason(change: store_health.Change, record: store_health.Record) -> str:
    if change.state == "recovered":
        return "an attempt succeeded again"
    found = []
    if record.consecutive_failures:
        found.append(instance_health.failures(record))
    elif record.last_run_failures:
        found.append(f"{record.last_run_failures} attempts in a row failed before one succeeded")
    if record.last_dead_at is not None and record.last_dead_at > (record.last_success_at or 0):
        found.append("a dead letter opened")
    return "; ".join(found) or "failing"

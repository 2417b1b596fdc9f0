"""Prometheus metrics (the official client) and one structured log line per request and attempt.

Labels stay bounded: plugin and instance (operator-configured) and an outcome from a fixed set;
never a delivery or conversation id. Requests for unknown plugins/instances are counted under
``plugin="", instance=""`` so a scanner cannot grow the label set; where they were sent is
counted apart, per ``/ingress/<plugin>/<instance>`` prefix (:class:`Unmatched`), in memory.

Gauges that describe the database (outbox depth, parked rows, oldest pending age, open dead
letters, file sizes) are read when scraped, by a collector, so they are never stale; they are
:class:`~ingress_box.store.backlog.Backlog`'s figures, the ones the dashboard and ``stats`` show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import logs
from .ingress import Answer, Inbound
from .retry import Decision
from .store import Database, dbfile
from .store.backlog import backlog
from .store.outbox import Claimed

access_log = logging.getLogger("ingress_box.access")
delivery_log = logging.getLogger("ingress_box.delivery")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class _DatabaseCollector(Collector):
    """Reads the outbox and file sizes at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        b = backlog(self.db, now)
        yield GaugeMetricFamily(
            "ingress_box_outbox_depth",
            "Deliveries waiting in the outbox, parked ones included",
            value=b.depth,
        )
        yield GaugeMetricFamily(
            "ingress_box_outbox_parked",
            "Dead heads of strict lanes, holding their lane until a redrive or discard",
            value=b.parked,
        )
        yield GaugeMetricFamily(
            "ingress_box_outbox_oldest_age_seconds",
            "Age of the oldest pending delivery (0 when none)",
            value=b.oldest_pending_age or 0.0,
        )
        yield GaugeMetricFamily(
            "ingress_box_dead_letters_open", "Dead letters not redriven", value=b.dead_open
        )
        files = dbfile.sizes(self.db)
        sizes = GaugeMetricFamily(
            "ingress_box_database_bytes", "Size of the database files", labels=["file"]
        )
        sizes.add_metric(["db"], files.database_bytes)
        sizes.add_metric(["wal"], files.wal_bytes)
        yield sizes


class Unmatched(Collector):
    """Calls under ``/ingress/`` that named no enabled instance's route, per path prefix.

    A prefix is ``/ingress/<plugin>/<instance>``, each part cut to 64 characters; past
    :data:`MAX_PREFIXES` distinct ones, new prefixes count under ``other``, so a scanner
    trying names costs a bounded amount of memory and of label sets.
    """

    MAX_PREFIXES = 100
    OTHER = "other"
    PART_CHARS = 64

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def note(self, plugin: str, instance: str) -> None:
        parts = [part[: self.PART_CHARS] for part in (plugin, instance) if part]
        # A path that is not valid text (a lone surrogate) is shown escaped, never refused.
        prefix = ("/ingress/" + "/".join(parts)).encode("utf-8", "backslashreplace").decode()
        if prefix not in self.counts and len(self.counts) >= self.MAX_PREFIXES:
            prefix = self.OTHER
        self.counts[prefix] = self.counts.get(prefix, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ingress_box_unmatched_requests",
            "Calls under /ingress/ naming no enabled instance's route, by path prefix",
            labels=["prefix"],
        )
        for prefix, count in list(self.counts.items()):
            family.add_metric([prefix], count)
        yield family


class Metrics:
    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.unmatched = Unmatched()
        self.registry.register(self.unmatched)
        self.requests = Counter(
            "ingress_box_ingress_requests",
            "Provider requests by outcome",
            ["plugin", "instance", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "ingress_box_ingress_request_seconds",
            "Time to answer a provider request",
            ["plugin"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            "ingress_box_commit_batch_size",
            "Writes committed together in one transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.attempts = Counter(
            "ingress_box_delivery_attempts",
            "Delivery attempts by outcome",
            ["plugin", "instance", "outcome"],
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "ingress_box_delivery_attempt_seconds",
            "Time of one delivery attempt",
            ["plugin"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "ingress_box_delivery_latency_seconds",
            "From acceptance to the target's 2xx",
            ["plugin"],
            buckets=_END_TO_END_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(db))
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._attempt_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- observers (hooked into the writer, the pipeline and the worker) -------------------

    def on_commit(self, batch_size: int) -> None:
        self.commit_batch.observe(batch_size)

    def on_request(self, req: Inbound, answer: Answer, seconds: float) -> None:
        known = answer.outcome != "not_found"
        key = (req.plugin, req.instance, answer.outcome) if known else ("", "", answer.outcome)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock and builds a key: once per label set
            children = (self.requests.labels(*key), self.request_seconds.labels(key[0]))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if not known:
            self.unmatched.note(req.plugin, req.instance)
        if not access_log.isEnabledFor(logging.INFO):
            return
        logs.info(
            access_log,
            "request",
            {
                "plugin": req.plugin[:64],
                "instance": req.instance[:64],
                "route": req.route[:64],
                "method": req.method,
                "status": answer.status,
                "outcome": answer.outcome,
                "delivery_id": answer.delivery_id,
                "ms": round(seconds * 1000, 2),
            },
        )

    def on_attempt(self, row: Claimed, decision: Decision, seconds: float) -> None:
        event = row.event
        key = (event.plugin, event.instance, decision.outcome)
        children = self._attempt_children.get(key)
        if children is None:  # as for requests (any thread may fill it: labels() is safe)
            plugin = event.plugin
            children = (
                self.attempts.labels(*key),
                self.attempt_seconds.labels(plugin),
                self.end_to_end.labels(plugin),
            )
            self._attempt_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if decision.outcome == "delivered":
            children[2].observe(max(0.0, time.time() - event.received_at))
        log_attempt(row, decision, seconds)


def log_attempt(row: Claimed, decision: Decision, seconds: float) -> None:
    """The line of an attempt (an observer of ``serve``'s worker through :class:`Metrics`, and
    of ``ingress-box worker``'s, which has no metrics to keep)."""
    if not delivery_log.isEnabledFor(logging.INFO):
        return
    event = row.event
    logs.info(
        delivery_log,
        "attempt",
        {
            "plugin": event.plugin,
            "instance": event.instance,
            "delivery_id": event.id,
            "attempt": event.attempt,
            "outcome": decision.outcome,
            "status": decision.status_code,
            "error": decision.error,
            "next_in_s": round(decision.delay, 3) if decision.outcome == "retry" else None,
            "ms": round(seconds * 1000, 2),
        },
    )

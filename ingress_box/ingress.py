"""The inbound pipeline, in CONTRACT order. Imports nothing from Starlette.

lookup (404) -> challenge (200/403) -> body cap (413, while streaming) -> verify (401)
-> rate limit (429) -> commit (503 if it cannot) -> ack (the same bytes for a duplicate)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import conversations, extract
from .config import Settings
from .errors import StorageUnavailable
from .plugins import Registry, Route
from .ratelimit import RateLimiter
from .signatures import SignedRequest, verify
from .store import Database
from .store import deliveries as store_deliveries
from .store import instances as store_instances
from .store.instances import Instance

log = logging.getLogger("ingress_box.ingress")

INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Inbound:
    """One provider request, as the HTTP edge hands it over."""

    method: str
    plugin: str
    instance: str
    route: str
    subpath: str                      # what followed the route, with the query string
    url: str                          # the URL the provider called (public base applied)
    query: Mapping[str, str]
    headers: Mapping[str, str]        # lower-case names
    body: AsyncIterator[bytes]
    content_length: int | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    outcome: str = ""                 # accepted, duplicate, or the rejection reason
    delivery_id: str | None = None    # the webhook-id, once the request got that far


def error(status: int, code: str, message: str, **headers: str) -> Answer:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return Answer(status, body, "application/json", headers, outcome=code)


class InstanceCache:
    """Instances by key, dropped whenever any process changes any instance.

    The check is one read of a counter that triggers bump (WAL reads never wait for writers),
    so a rotated secret or a disabled instance takes effect on the very next request.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._version = ""
        self._items: dict[tuple[str, str], Instance | None] = {}

    def get(self, plugin_id: str, instance_id: str) -> Instance | None:
        current = store_instances.version(self._db)
        if current != self._version:
            self._items.clear()
            self._version = current
        key = (plugin_id, instance_id)
        if key not in self._items:
            if len(self._items) > 10_000:  # unknown ids are cached too: keep that bounded
                self._items.clear()
            self._items[key] = store_instances.get(self._db, plugin_id, instance_id)
        return self._items[key]


@dataclass(frozen=True)
class Rejection:
    received_at: float
    route: str
    status: int
    reason: str


class Ingress:
    def __init__(self, settings: Settings, db: Database, registry: Registry,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.clock = clock
        self.instances = InstanceCache(db)
        self.limiter = RateLimiter(settings.rate_limit, clock=time.monotonic)
        # The last few rejections per instance, in memory: bounded, and a flood of bad
        # requests never turns into disk writes.
        self.rejections: dict[tuple[str, str], deque[Rejection]] = {}
        self.on_accepted: list[Callable[[], None]] = []
        self.observers: list[Callable[[Inbound, Answer, float], None]] = []
        self.commit_timeout = settings.busy_timeout_seconds + 5.0

    async def handle(self, inbound: Inbound) -> Answer:
        started = time.perf_counter()
        answer = await self._pipeline(inbound)
        for observe in self.observers:
            observe(inbound, answer, time.perf_counter() - started)
        return answer

    async def _pipeline(self, req: Inbound) -> Answer:
        plugin = self.registry.get(req.plugin)
        route = plugin.routes.get(req.route) if plugin is not None else None
        instance = (self.instances.get(req.plugin, req.instance)
                    if route is not None and INSTANCE_ID.match(req.instance) else None)
        if route is None or instance is None or not instance.enabled:
            return error(404, "not_found", "no such plugin, instance or route")

        if route.challenge is not None and req.method == "GET":
            return self._challenge(route, instance, req)
        if route.methods is not None and req.method not in route.methods:
            return self._reject(instance, route, error(
                405, "method_not_allowed", f"use {', '.join(route.methods)}",
                allow=", ".join(route.methods)))

        raw = await self._read_capped(req, self._cap(route))
        if raw is None:
            return self._reject(instance, route, error(
                413, "body_too_large", f"body exceeds {self._cap(route)} bytes"))

        signed = SignedRequest(req.method, req.url, req.headers, raw)
        verdict = verify(route.verify, instance.valid_secrets(self.clock()), signed, self.clock())
        if not verdict.ok:
            return self._reject(instance, route, error(401, verdict.reason, "verification failed"))

        wait = self.limiter.take((instance.plugin_id, instance.instance_id))
        if wait > 0:
            return self._reject(instance, route, error(
                429, "rate_limited", "too many requests", **{"retry-after": str(wait)}))

        return await self._store(req, route, instance, raw)

    def _cap(self, route: Route) -> int:
        return route.max_body_bytes if route.max_body_bytes is not None else (
            self.settings.max_body_bytes)

    @staticmethod
    async def _read_capped(req: Inbound, cap: int) -> bytes | None:
        """The whole body, or None as soon as it is known to exceed ``cap``."""
        if req.content_length is not None and req.content_length > cap:
            return None
        chunks, size = [], 0
        async for chunk in req.body:
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _challenge(self, route: Route, instance: Instance, req: Inbound) -> Answer:
        spec = route.challenge
        assert spec is not None
        expected = (instance.verify_token or "").encode()
        given = req.query.get(spec.token_param, "").encode()
        if (expected and given and req.query.get(spec.mode_param) == spec.mode_value
                and hmac.compare_digest(expected, given)):
            challenge = req.query.get(spec.challenge_param, "")
            return Answer(200, challenge.encode(), "text/plain; charset=utf-8",
                          outcome="challenge")
        return self._reject(instance, route, error(403, "challenge_failed",
                                                   "verify token does not match"))

    async def _store(self, req: Inbound, route: Route, instance: Instance, raw: bytes) -> Answer:
        body = extract.Body(raw)
        try:
            provider_id = extract.provider_delivery_id(
                route, instance.plugin_id, instance.instance_id, req.headers, body)
        except extract.BodyNotJson:
            return self._reject(instance, route, error(
                400, "body_not_json", "the route reads its delivery id from a JSON body"))
        delivery_id = extract.webhook_id(instance.plugin_id, instance.instance_id, provider_id)
        new = store_deliveries.NewDelivery(
            id=delivery_id, plugin_id=instance.plugin_id, instance_id=instance.instance_id,
            route=route.name, provider_delivery_id=provider_id,
            conversation=extract.conversation_id(route, req.headers, body),
            method=req.method, subpath=req.subpath,
            content_type=req.headers.get("content-type"),
            headers=extract.redact_headers(req.headers),
            body=raw, received_at=self.clock(),
        )
        learned = conversations.learned(route, instance, req.headers, body, new.conversation)

        def accept(conn: sqlite3.Connection) -> bool:
            is_new = store_deliveries.accept(conn, new)
            if is_new and learned is not None:  # same transaction: no ack without its mapping
                conversations.learn(conn, new.id, learned, new.received_at)
            return is_new

        try:
            is_new = await asyncio.wait_for(self.db.awrite(accept), self.commit_timeout)
        except (TimeoutError, StorageUnavailable) as exc:
            log.warning("cannot commit %s/%s: %s", instance.plugin_id, instance.instance_id, exc)
            return error(503, "storage_unavailable", "cannot store the webhook now; retry",
                         **{"retry-after": "1"})
        if is_new:
            for wake in self.on_accepted:
                wake()
        ack = route.ack
        payload = ack.body if ack.body is not None else json.dumps(
            {"status": "accepted", "id": delivery_id}, separators=(",", ":")).encode()
        return Answer(ack.status, payload, ack.content_type,
                      outcome="accepted" if is_new else "duplicate", delivery_id=delivery_id)

    def _reject(self, instance: Instance, route: Route, answer: Answer) -> Answer:
        kept = self.rejections.setdefault(
            (instance.plugin_id, instance.instance_id),
            deque(maxlen=self.settings.rejections_kept))
        kept.append(Rejection(self.clock(), route.name, answer.status, answer.outcome))
        return answer

    def forget(self, plugin_id: str, instance_id: str) -> None:
        """Drop what is remembered of a deleted instance (a new one of that id starts clean)."""
        self.rejections.pop((plugin_id, instance_id), None)

    def rejections_json(self, plugin_id: str, instance_id: str) -> list[dict[str, Any]]:
        kept = self.rejections.get((plugin_id, instance_id), ())
        return [
            {"received_at": r.received_at, "route": r.route, "status": r.status,
             "reason": r.reason}
            for r in reversed(kept)
        ]

"""The inbound pipeline, in CONTRACT order. Imports nothing from Starlette.

lookup (404) -> challenge (200/403) -> body cap (413, while streaming) -> verify (401)
-> rate limit (429) -> commit (503 if it cannot) -> ack (the same bytes for a duplicate)
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from . import extract, mapping_rules
from .config import Settings
from .errors import StorageUnavailable, error_document
from .plugins import Registry, Route
from .ratelimit import RateLimiter
from .signatures import SignedRequest, verify
from .store import Database
from .store import deliveries as store_deliveries
from .store.acceptor import Acceptor
from .store.instances import INSTANCE_ID, Instance, InstanceCache

log = logging.getLogger("ingress_box.ingress")


@dataclass(frozen=True)
class Inbound:
    """One provider request, as the HTTP edge hands it over."""

    method: str
    plugin: str
    instance: str
    route: str
    subpath: str  # what followed the route, with the query string
    url: str  # the URL the provider called (public base applied)
    query_string: str
    headers: Mapping[str, str]  # lower-case names
    body: AsyncIterator[bytes]
    content_length: int | None = None

    @functools.cached_property
    def query(self) -> dict[str, str]:
        """The query parameters (parsed only by the routes that read them)."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    outcome: str = ""  # accepted, duplicate, or the rejection reason
    delivery_id: str | None = None  # the webhook-id, once the request got that far
    rejected: tuple[str, str, str] | None = None  # (plugin, instance, route) a refusal is about


def error(status: int, code: str, message: str, **headers: str) -> Answer:
    body = json.dumps(error_document(code, message)).encode()
    return Answer(status, body, "application/json", headers, outcome=code)


class _Once:
    """What a request does only once however often the pipeline re-checks it: read the body
    from the stream, and spend a rate-limit token."""

    def __init__(self, req: Inbound) -> None:
        self._req = req
        self._read = False
        self._raw: bytes | None = None
        self.rate_wait: int | None = None

    @property
    def raw(self) -> bytes | None:
        """The body, once read whole within its cap."""
        return self._raw

    async def read_capped(self, cap: int) -> bytes | None:
        """The whole body, or None as soon as it is known to exceed ``cap``."""
        if not self._read:
            self._read = True
            self._raw = await self._read_stream(cap)
        return self._raw if self._raw is None or len(self._raw) <= cap else None

    async def _read_stream(self, cap: int) -> bytes | None:
        req = self._req
        if req.content_length is not None and req.content_length > cap:
            return None
        chunks, size = [], 0
        async for chunk in req.body:
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


def _stored_subpath(subpath: str) -> str:
    path, mark, query = subpath.partition("?")
    return path + mark + extract.redact_query(query)


# What hears of a final refusal of a known instance's request whose body was read whole.
Refused = Callable[[Inbound, Route, bytes, Answer], None]

# Answers that depend on instance data without a write to check it: re-checked before sent.
_RECHECKED = frozenset({401, 403, 404, 405})
_STALE = Answer(503, outcome="stale")  # the instances changed under this request: run again


def _ack(route: Route, delivery_id: str, outcome: str) -> Answer:
    ack = route.ack
    # The id is hex: no escaping needed, and the bytes are the same for every duplicate.
    payload = (
        ack.body
        if ack.body is not None
        else (b'{"status":"accepted","id":"' + delivery_id.encode() + b'"}')
    )
    return Answer(ack.status, payload, ack.content_type, outcome=outcome, delivery_id=delivery_id)


@dataclass(frozen=True)
class Rejection:
    received_at: float
    route: str
    status: int
    reason: str


class Ingress:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: Registry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.clock = clock
        self.instances = InstanceCache(db)
        self.acceptor = Acceptor(db)
        self.limiter = RateLimiter(settings.rate_limit, clock=time.monotonic)
        # The last few rejections per instance, in memory: bounded, and a flood of bad
        # requests never turns into disk writes (what on_refused keeps on disk is its own cap).
        self.rejections: dict[tuple[str, str], deque[Rejection]] = {}
        self.on_accepted: list[Callable[[], None]] = []
        self.on_refused: list[Refused] = []
        self.observers: list[Callable[[Inbound, Answer, float], None]] = []
        self.commit_timeout = settings.busy_timeout_seconds + 5.0

    async def handle(self, inbound: Inbound, *, arrived_at: float | None = None) -> Answer:
        """Answer a provider request; with ``arrived_at``, admit a kept one instead.

        Admission runs the same pipeline (with the instance's secrets of now, and the timestamp
        tolerance measured from ``arrived_at``), but is no provider request: nothing of it is
        remembered, kept again or counted.
        """
        started = time.perf_counter()
        once = _Once(inbound)
        for _ in range(3):
            try:
                answer = await self._pipeline(inbound, once, arrived_at)
            except StorageUnavailable as exc:  # a cache miss or re-check could not read
                log.warning("cannot read the configuration: %s", exc)
                answer = error(
                    503,
                    "storage_unavailable",
                    "cannot read the configuration now; retry",
                    **{"retry-after": "1"},
                )
                break
            if answer is _STALE:
                continue
            recheck = answer.status in _RECHECKED or answer.outcome == "challenge"
            if not (recheck and self.instances.refresh()):
                break
        else:  # instances changing on every try: let the provider come back
            answer = error(
                503,
                "storage_unavailable",
                "configuration is changing; retry",
                **{"retry-after": "1"},
            )
        if arrived_at is not None:
            return answer
        self._remember(answer)
        if answer.rejected is not None and once.raw is not None:
            self._refused(inbound, answer, once.raw)
        for observe in self.observers:
            observe(inbound, answer, time.perf_counter() - started)
        return answer

    def _refused(self, inbound: Inbound, answer: Answer, raw: bytes) -> None:
        assert answer.rejected is not None
        plugin_id, _, route_name = answer.rejected
        plugin = self.registry.get(plugin_id)
        route = plugin.routes.get(route_name) if plugin is not None else None
        if route is None:
            return
        for hear in self.on_refused:
            try:
                hear(inbound, route, raw, answer)
            except Exception:  # keeping a refusal must never change or fail the answer
                log.exception("a refusal hook failed")

    async def _pipeline(self, req: Inbound, once: _Once, arrived_at: float | None) -> Answer:
        # The configuration version this request is checked against: taken before the lookup,
        # so a change made while the body streams in makes the commit refuse it (see _store).
        version = self.instances.version
        plugin = self.registry.get(req.plugin)
        route = plugin.routes.get(req.route) if plugin is not None else None
        instance = (
            self.instances.get(req.plugin, req.instance)
            if route is not None and INSTANCE_ID.fullmatch(req.instance)
            else None
        )
        if route is None or instance is None or not instance.enabled:
            return error(404, "not_found", "no such plugin, instance or route")

        if route.challenge is not None and req.method == "GET":
            return self._challenge(route, instance, req)
        if route.methods is not None and req.method not in route.methods:
            return self._reject(
                instance,
                route,
                error(
                    405,
                    "method_not_allowed",
                    f"use {', '.join(route.methods)}",
                    allow=", ".join(route.methods),
                ),
            )

        raw = await once.read_capped(self._cap(route))
        if raw is None:
            return self._reject(
                instance,
                route,
                error(413, "body_too_large", f"body exceeds {self._cap(route)} bytes"),
            )

        signed = SignedRequest(req.method, req.url, req.headers, raw)
        now = self.clock()
        verdict = verify(
            route.verify,
            instance.valid_secrets(now),
            signed,
            now if arrived_at is None else arrived_at,
        )
        if not verdict.ok:
            return self._reject(instance, route, error(401, verdict.reason, "verification failed"))

        body = extract.Body(raw)
        if once.rate_wait is None:
            once.rate_wait = self.limiter.take((instance.plugin_id, instance.instance_id))
        wait = once.rate_wait
        if wait > 0:
            duplicate = await self._seen(req, route, instance, body)
            if duplicate is not None:
                return duplicate
            return self._reject(
                instance,
                route,
                error(429, "rate_limited", "too many requests", **{"retry-after": str(wait)}),
            )

        return await self._store(req, route, instance, body, version)

    def _cap(self, route: Route) -> int:
        return (
            route.max_body_bytes
            if route.max_body_bytes is not None
            else (self.settings.max_body_bytes)
        )

    def _challenge(self, route: Route, instance: Instance, req: Inbound) -> Answer:
        spec = route.challenge
        assert spec is not None
        expected = (instance.verify_token or "").encode()
        given = req.query.get(spec.token_param, "").encode()
        if (
            expected
            and given
            and req.query.get(spec.mode_param) == spec.mode_value
            and hmac.compare_digest(expected, given)
        ):
            challenge = req.query.get(spec.challenge_param, "")
            return Answer(200, challenge.encode(), "text/plain; charset=utf-8", outcome="challenge")
        return self._reject(
            instance, route, error(403, "challenge_failed", "verify token does not match")
        )

    async def _seen(
        self, req: Inbound, route: Route, instance: Instance, body: extract.Body
    ) -> Answer | None:
        """The ack of a delivery already stored, for a request the rate limit would refuse.

        A duplicate's answer is the first ack whenever it comes; finding it costs one read and
        never a write, so the limit still bounds what a flood of verified requests can store.
        """
        try:
            provider_id = extract.provider_delivery_id(
                route, instance.plugin_id, instance.instance_id, req.headers, body
            )
            seen = await store_deliveries.seen(
                self.db, instance.plugin_id, instance.instance_id, provider_id
            )
        except (extract.BodyNotJson, extract.BadDeliveryId, StorageUnavailable):
            return None
        if not seen:
            return None
        delivery_id = extract.webhook_id(instance.plugin_id, instance.instance_id, provider_id)
        return _ack(route, delivery_id, "duplicate")

    async def _store(
        self, req: Inbound, route: Route, instance: Instance, body: extract.Body, checked_at: str
    ) -> Answer:
        try:
            provider_id = extract.provider_delivery_id(
                route, instance.plugin_id, instance.instance_id, req.headers, body
            )
        except extract.BodyNotJson:
            return self._reject(
                instance,
                route,
                error(400, "body_not_json", "the route reads its delivery id from a JSON body"),
            )
        except extract.BadDeliveryId:
            return self._reject(
                instance,
                route,
                error(
                    400,
                    "bad_delivery_id",
                    f"the delivery id must be text of at most {extract.MAX_VALUE_CHARS} characters",
                ),
            )
        delivery_id = extract.webhook_id(instance.plugin_id, instance.instance_id, provider_id)
        new = store_deliveries.NewDelivery(
            id=delivery_id,
            plugin_id=instance.plugin_id,
            instance_id=instance.instance_id,
            route=route.name,
            provider_delivery_id=provider_id,
            conversation=extract.conversation_id(route, req.headers, body),
            method=req.method,
            subpath=_stored_subpath(req.subpath),
            content_type=req.headers.get("content-type"),
            headers=extract.redact_headers(
                req.headers,
                getattr(route.verify, "header", None),
                self.settings.max_header_bytes,
            ),
            body=extract.stored_body(route, body),
            received_at=self.clock(),
            event_type=extract.event_type(route, req.headers, body),
        )
        learned = mapping_rules.learned(route, instance, req.headers, body, new.conversation)

        def learn(conn: sqlite3.Connection) -> None:  # same transaction: no ack without it
            assert learned is not None
            mapping_rules.learn(conn, new.id, learned, new.received_at)

        try:
            async with asyncio.timeout(self.commit_timeout):
                is_new, version = await self.acceptor.accept(
                    new, checked_at, learn if learned is not None else None
                )
        except (TimeoutError, StorageUnavailable) as exc:
            log.warning("cannot commit %s/%s: %s", instance.plugin_id, instance.instance_id, exc)
            return error(
                503,
                "storage_unavailable",
                "cannot store the webhook now; retry",
                **{"retry-after": "1"},
            )
        if is_new is None:
            self.instances.reset(version)
            return _STALE
        if is_new:
            for wake in self.on_accepted:
                wake()
        return _ack(route, delivery_id, "accepted" if is_new else "duplicate")

    @staticmethod
    def _reject(instance: Instance, route: Route, answer: Answer) -> Answer:
        """Mark a refusal of a known instance's request, to be remembered once it is final."""
        return replace(answer, rejected=(instance.plugin_id, instance.instance_id, route.name))

    def _remember(self, answer: Answer) -> None:
        if answer.rejected is None:
            return
        plugin_id, instance_id, route = answer.rejected
        kept = self.rejections.setdefault(
            (plugin_id, instance_id), deque(maxlen=self.settings.rejections_kept)
        )
        kept.append(Rejection(self.clock(), route, answer.status, answer.outcome))

    def forget(self, plugin_id: str, instance_id: str) -> None:
        """Drop what is remembered of a deleted instance (a new one of that id starts clean)."""
        self.rejections.pop((plugin_id, instance_id), None)

    def rejections_json(self, plugin_id: str, instance_id: str) -> list[dict[str, Any]]:
        kept = self.rejections.get((plugin_id, instance_id), ())
        return [
            {"received_at": r.received_at, "route": r.route, "status": r.status, "reason": r.reason}
            for r in reversed(kept)
        ]

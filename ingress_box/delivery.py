"""The outbound side: what a handler receives, the handler registry, ``forward``, and retry policy.

A handler gets an :class:`Event` and a :class:`HandlerContext`; it returns to say "delivered",
raises :class:`~ingress_box.errors.RetryLater` for a transient failure or
:class:`~ingress_box.errors.PermanentFailure` to dead-letter now. :func:`decide` turns that outcome
into a :class:`Decision` for the worker; it is pure (the randomness is injected) so it can be tested
without waiting. ``forward`` signs per Standard Webhooks (https://www.standardwebhooks.com/).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import importlib
import importlib.metadata
import math
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from .config import Settings
from .errors import PermanentFailure, RetryLater

if TYPE_CHECKING:  # only a type here: conversations builds on the store, not the other way round
    from .mapping_rules import MappingAccess

MAX_RESPONSE_BYTES = 64 * 1024  # never read more of a target's answer than this
ERROR_EXCERPT_CHARS = 200
RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx

# Framing headers belong to httpx; letting config set them would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 header name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECONDS = re.compile(r"^\d+(\.\d*)?$")


@dataclass(frozen=True)
class Event:
    id: str
    plugin: str
    instance: str
    route: str
    provider_delivery_id: str
    conversation: str | None
    method: str
    subpath: str
    content_type: str | None
    headers: Mapping[str, str]
    body: bytes
    attempt: int
    received_at: float


@dataclass(frozen=True)
class Target:
    url: str | None
    outbound_secret: str = field(repr=False)
    config: Mapping[str, Any] = field(repr=False)  # may hold credentials (extra headers)


@dataclass
class HandlerContext:
    target: Target
    client: httpx.Client
    timeout: float
    now: Callable[[], float]
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    # The event's plugin instance's conversation mappings, to read and write (None in tests
    # that build a context by hand).
    mappings: MappingAccess | None = None
    # The client's transport, for forward's fast path: a webhook needs no cookie jar, auth or
    # redirect handling, and skipping httpx.Client's layers halves its CPU per request.
    transport: httpx.BaseTransport | None = None


class Handler(Protocol):
    def __call__(self, event: Event, ctx: HandlerContext) -> None: ...


class HttpRetryLater(RetryLater):
    """A transient failure that came with an HTTP status (408, 429, 5xx)."""

    def __init__(self, error: str, status_code: int, delay: float | None = None) -> None:
        super().__init__(error, delay)
        self.status_code = status_code


class HttpPermanentFailure(PermanentFailure):
    """A permanent failure that came with an HTTP status (1xx, 3xx, other 4xx)."""

    def __init__(self, error: str, status_code: int) -> None:
        super().__init__(error)
        self.status_code = status_code


# --- Standard Webhooks signing ---------------------------------------------------------------


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        # Pad like the reference libraries do, so unpadded secrets from other tools still work.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as exc:
        raise ValueError("outbound secret is not whsec_<base64>") from exc
    if not key:
        raise ValueError("outbound secret is empty")
    return key


def sign(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>``; the body as raw bytes."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def generate_outbound_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


# --- handlers ----------------------------------------------------------------------------------


@cache
def _user_agent() -> str:
    try:
        version = importlib.metadata.version("ingress-box")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        version = "dev"
    return f"ingress-box/{version}"


def _header_value(value: str) -> str:
    # Provider and conversation ids come from untrusted bodies: blanking control characters means
    # a value can never inject a header line (non-ASCII is sent as UTF-8, see forward).
    return _CONTROL.sub(" ", value)


def _configured_headers(config: Mapping[str, Any]) -> dict[str, str]:
    raw = config.get("headers") or {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and _TOKEN.match(k) for k, v in raw.items()
    ):
        raise PermanentFailure('config "headers" must map header names to strings')
    return {
        k.lower(): _header_value(v) for k, v in raw.items() if k.lower() not in _RESERVED_HEADERS
    }


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a ``Retry-After`` (delay-seconds or HTTP-date); None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown origin (RFC 5322)
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    # Raw bytes, not decoded: a compressed answer could otherwise inflate far past the cap.
    received = bytearray()
    try:
        for chunk in response.iter_raw():
            received += chunk
            if len(received) >= MAX_RESPONSE_BYTES or time.monotonic() >= deadline:
                break
    except httpx.TransportError:
        pass  # the status line already decided the outcome; the body is only an excerpt
    return bytes(received[:MAX_RESPONSE_BYTES])


def forward(event: Event, ctx: HandlerContext) -> None:
    """POST the raw inbound bytes to the instance's target_url, signed per Standard Webhooks."""
    url = ctx.target.url
    if not url:
        raise PermanentFailure("no target_url configured")
    timestamp = int(ctx.now())
    try:
        signature = sign(event.id, timestamp, event.body, ctx.target.outbound_secret)
    except ValueError as exc:
        raise PermanentFailure(str(exc)) from exc
    # Later entries win: config and enrichment headers can never override the signed protocol.
    headers: dict[str, str] = {
        "user-agent": _user_agent(),
        "accept-encoding": "identity",
        **_configured_headers(ctx.target.config),
        **{k.lower(): _header_value(v) for k, v in ctx.extra_headers.items()},
        "content-type": event.content_type or "application/octet-stream",
        "webhook-id": event.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "ingress-box-plugin": event.plugin,
        "ingress-box-instance": event.instance,
        "ingress-box-route": event.route,
        "ingress-box-delivery-id": _header_value(event.provider_delivery_id),
        "ingress-box-attempt": str(event.attempt),
    }
    if event.conversation is not None:
        headers["ingress-box-conversation"] = _header_value(event.conversation)
    # Sync httpx has no total timeout: each phase gets ctx.timeout and the body read also stops at
    # the attempt's deadline, so only a target that stalls in several phases can exceed it.
    deadline = time.monotonic() + ctx.timeout
    try:
        request = httpx.Request(
            "POST",
            url,
            content=event.body,
            # httpx would encode str values as ASCII and refuse a conversation id like "José".
            headers=[(k.encode("ascii"), v.encode("utf-8")) for k, v in headers.items()],
            extensions={"timeout": httpx.Timeout(ctx.timeout).as_dict()},
        )
        response = (
            ctx.transport.handle_request(request)
            if ctx.transport is not None
            else ctx.client.send(request, stream=True, follow_redirects=False)
        )
        try:
            # Reading (capped) even on success lets the connection go back to the pool.
            body = _read_capped(response, deadline)
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        raise RetryLater("timeout") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise PermanentFailure(f"invalid target_url: {exc}") from exc
    except httpx.TransportError as exc:
        raise RetryLater(f"connection error: {str(exc) or type(exc).__name__}") from exc
    status = response.status_code
    if 200 <= status < 300:
        return
    excerpt = body.decode("utf-8", errors="replace").strip()[:ERROR_EXCERPT_CHARS]
    error = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
    if status in RETRYABLE_STATUSES or 500 <= status < 600:
        delay = _retry_after(response.headers.get("retry-after"), ctx.now())
        raise HttpRetryLater(error, status, delay)
    raise HttpPermanentFailure(error, status)


_HANDLERS: dict[str, Handler] = {"forward": forward}


def register_handler(name: str, handler: Handler) -> None:
    """Make ``handler`` resolvable as ``name`` (a later registration of the same name wins)."""
    if not name or ":" in name:
        raise ValueError(f"handler name {name!r} must be non-empty and contain no ':'")
    _HANDLERS[name] = handler


def resolve_handler(name: str) -> Handler:
    """A registered handler, or ``package.module:function`` imported now; LookupError if neither."""
    if name in _HANDLERS:
        return _HANDLERS[name]
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise LookupError(f"unknown handler {name!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"cannot load handler {name!r}: {exc}") from exc
    if not callable(target):  # still a lookup error: the name does not name a handler
        raise LookupError(f"handler {name!r} is not callable")  # noqa: TRY004
    handler: Handler = target
    return handler


# --- retry policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 5.0
    max_seconds: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
        )


@dataclass(frozen=True)
class Decision:
    outcome: Literal["delivered", "retry", "dead"]
    delay: float
    error: str | None
    status_code: int | None


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), with full jitter.

    ``rng.uniform(0, min(max_seconds, base_seconds * 2 ** (attempt - 1)))``: the ceiling doubles
    per attempt up to ``max_seconds`` and the wait is uniform below it ("full jitter", as in AWS's
    "Exponential Backoff And Jitter" and hynek/stamina), so retries of many deliveries that failed
    together spread out instead of hitting a recovering target at the same instant.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # Capping the exponent keeps the float finite for absurd attempt numbers.
    ceiling = min(policy.max_seconds, policy.base_seconds * 2.0 ** min(attempt - 1, 1000))
    return rng.uniform(0, ceiling)


def decide(
    policy: RetryPolicy, attempt: int, result: BaseException | None, rng: random.Random
) -> Decision:
    """What to do after attempt number ``attempt`` ended with ``result`` (None: it succeeded).

    Retry-After (``RetryLater.delay``) is a floor under the jittered backoff, itself capped by
    ``max_seconds`` so a target cannot park a delivery for days. Anything that is not a
    PermanentFailure is retried until the attempt budget is spent, then dead-lettered.
    """
    if result is None:
        return Decision("delivered", 0.0, None, None)
    status = getattr(result, "status_code", None)
    status_code = status if isinstance(status, int) else None
    if isinstance(result, PermanentFailure):
        return Decision("dead", 0.0, result.error, status_code)
    if isinstance(result, RetryLater):
        error, floor = result.error, result.delay
    else:
        error, floor = f"{type(result).__name__}: {str(result)[:ERROR_EXCERPT_CHARS]}", None
    if attempt >= policy.max_attempts:
        return Decision("dead", 0.0, error, status_code)
    delay = backoff(policy, attempt, rng)
    if floor is not None and math.isfinite(floor):
        delay = max(delay, min(floor, policy.max_seconds))
    return Decision("retry", delay, error, status_code)

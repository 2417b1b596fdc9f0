"""The built-in ``forward`` handler: POST the raw inbound bytes to the instance's target_url.

Signed per Standard Webhooks (:mod:`ingress_box.signing`) with the CONTRACT's ``ingress-box-*``
headers. 2xx is delivered; 408, 429 and 5xx are :class:`~ingress_box.errors.RetryLater` (with the
target's ``Retry-After``); timeouts and connection errors too; anything else is permanent.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib.metadata
import re
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC
from functools import cache
from typing import Any

import httpcore
import httpx

from .delivery import ERROR_EXCERPT_CHARS, Event, HandlerContext
from .errors import PermanentFailure, RetryLater
from .signing import sign

MAX_RESPONSE_BYTES = 64 * 1024  # never read more of a target's answer than this
RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx

# Framing headers belong to httpx; letting config set them would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 header name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECONDS = re.compile(r"^\d+(\.\d*)?$")


# -- the deadline of an attempt ------------------------------------------------------------------

# One attempt at a time runs on a worker thread (sync httpx), so the deadline is the thread's.
_attempt = threading.local()


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    _attempt.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _attempt.deadline = None


def _left(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """The phase's timeout cut to what is left of the attempt; ``expired`` once nothing is."""
    deadline: float | None = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the delivery deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # A target that reads slowly would let one send of a large body outlast the deadline.
        view = memoryview(buffer)
        while view:
            chunk, view = view[:65536], view[65536:]
            self._inner.write(bytes(chunk), _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's transport, whose sockets keep to the deadline of the attempt :func:`forward`
    makes on this thread."""
    transport = httpx.HTTPTransport(limits=limits)
    # httpx takes no network backend, so ours wraps the one of the pool it built (a change of
    # httpx's internals fails here, at start-up, not in a delivery).
    pool = transport._pool
    if not isinstance(pool, httpcore.ConnectionPool):  # pragma: no cover
        raise TypeError(f"unexpected httpx pool {type(pool).__name__}")
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return transport


# -- the request --------------------------------------------------------------------------------


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


def _wire_bytes(value: str) -> bytes:
    """A received header value's bytes again: the edge decoded them one byte per character."""
    try:
        return _CONTROL.sub(" ", value).encode("latin-1")
    except UnicodeEncodeError:  # not a received value (a row written by something else)
        return value.encode("utf-8")


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


def _send(request: httpx.Request, ctx: HandlerContext) -> tuple[httpx.Response, bytes]:
    """The answer and the start of its body. Sync httpx has no total timeout: the deadline
    transport cuts every socket operation to the time left, and the body read also stops at
    the deadline between chunks (for transports that are not ours)."""
    deadline = time.monotonic() + ctx.timeout
    response = (
        ctx.transport.handle_request(request)
        if ctx.transport is not None
        else ctx.client.send(request, stream=True, follow_redirects=False)
    )
    try:
        # Reading (capped) even on success lets the connection go back to the pool.
        return response, _read_capped(response, deadline)
    finally:
        response.close()


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
    request = httpx.Request(
        "POST",
        url,
        content=event.body,
        # httpx would encode str values as ASCII and refuse a conversation id like "José".
        # Ids are text (UTF-8 on the wire); the content type is the provider's own bytes.
        headers=[
            (k.encode("ascii"), _wire_bytes(v) if k == "content-type" else v.encode("utf-8"))
            for k, v in headers.items()
        ],
        extensions={"timeout": httpx.Timeout(ctx.timeout).as_dict()},
    )
    try:
        with _deadline(ctx.timeout):
            response, body = _send(request, ctx)
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
        raise RetryLater(error, delay, status_code=status)
    raise PermanentFailure(error, status_code=status)

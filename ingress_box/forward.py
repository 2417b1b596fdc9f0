"""The built-in ``forward`` handler: POST the raw inbound bytes to the instance's target_url.

Signed per Standard Webhooks (:mod:`ingress_box.signing`) with the CONTRACT's ``ingress-box-*``
headers. 2xx is delivered; 408, 429 and 5xx are :class:`~ingress_box.errors.RetryLater` (with the
target's ``Retry-After``); timeouts and connection errors too; anything else is permanent.
Sent with the worker's lean pooled client (:mod:`ingress_box.outbound`), not httpx: a webhook
needs no cookies, auth or redirects, and the general client cost more CPU than the rest of a
delivery. :func:`forward_on_loop` is the same request awaited on serve's event loop.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import importlib.metadata
import re
import shlex
from collections.abc import Iterator, Mapping
from datetime import UTC
from functools import cache
from typing import Any

from . import outbound
from .delivery import ERROR_EXCERPT_CHARS, Event, HandlerContext, Target
from .errors import PermanentFailure, RetryLater
from .probe import TEST_HEADER, TEST_ROUTE
from .signing import sign
from .store.instances import mask, mask_url

MAX_RESPONSE_BYTES = 64 * 1024  # never read more of a target's answer than this
RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx

# Framing headers belong to the client; letting config set them would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 header name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECONDS = re.compile(r"^\d+(\.\d*)?$")


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


def request_headers(
    event: Event, target: Target, extra_headers: Mapping[str, str], timestamp: int
) -> dict[str, str]:
    """The headers forward sends for ``event`` at ``timestamp``, signed with the target's
    outbound secret: the one list behind both the request and the dashboard's curl."""
    try:
        signature = sign(event.id, timestamp, event.body, target.outbound_secret)
    except ValueError as exc:
        raise PermanentFailure(str(exc)) from exc
    # Later entries win: config and enrichment headers can never override the signed protocol.
    headers: dict[str, str] = {
        "user-agent": _user_agent(),
        "accept-encoding": "identity",
        **_configured_headers(target.config),
        **{k.lower(): _header_value(v) for k, v in extra_headers.items()},
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
    # The test mark is the box's alone: on its test events, never from config on others.
    headers.pop(TEST_HEADER, None)
    if event.route == TEST_ROUTE:
        headers[TEST_HEADER] = "1"
    return headers


def forward(event: Event, ctx: HandlerContext) -> None:
    """POST the raw inbound bytes to the instance's target_url, signed per Standard Webhooks."""
    url, wire = _request(event, ctx)
    # Without the worker's pool (a context built by hand) the connection lasts one request.
    pool = ctx.outbound or outbound.Pool(max_idle=0)
    with _network_errors():
        answer = pool.post(url, wire, event.body, ctx.timeout, MAX_RESPONSE_BYTES)
    _judge(answer, ctx)


async def forward_on_loop(event: Event, ctx: HandlerContext, pool: outbound.LoopPool) -> None:
    """:func:`forward` on the running event loop, through ``pool``."""
    url, wire = _request(event, ctx)
    with _network_errors():
        answer = await pool.post(url, wire, event.body, ctx.timeout, MAX_RESPONSE_BYTES)
    _judge(answer, ctx)


def _request(event: Event, ctx: HandlerContext) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The URL and the headers as they go on the wire."""
    url = ctx.target.url
    if not url:
        raise PermanentFailure("no target_url configured")
    headers = request_headers(event, ctx.target, ctx.extra_headers, int(ctx.now()))
    # Ids are text (UTF-8 on the wire); the content type is the provider's own bytes.
    wire = [
        (k.encode("ascii"), _wire_bytes(v) if k == "content-type" else v.encode("utf-8"))
        for k, v in headers.items()
    ]
    return url, wire


@contextlib.contextmanager
def _network_errors() -> Iterator[None]:
    """What the client raises, as the outcome it means."""
    try:
        yield
    except outbound.Timeout as exc:
        raise RetryLater("timeout") from exc
    except outbound.InvalidURL as exc:
        raise PermanentFailure(f"invalid target_url: {exc}") from exc
    except outbound.ConnectionFailed as exc:
        raise RetryLater(f"connection error: {exc}") from exc


def _judge(answer: outbound.Answer, ctx: HandlerContext) -> None:
    """2xx is delivered; 408, 429 and 5xx are retried (after the target's Retry-After); the
    rest is permanent."""
    status = answer.status
    ctx.answered(status, answer.body)
    if 200 <= status < 300:
        return
    excerpt = answer.body.decode("utf-8", errors="replace").strip()[:ERROR_EXCERPT_CHARS]
    error = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
    if status in RETRYABLE_STATUSES or 500 <= status < 600:
        delay = _retry_after(answer.headers.get("retry-after"), ctx.now())
        raise RetryLater(error, delay, status_code=status)
    raise PermanentFailure(error, status_code=status)


# -- the same request as a shell command ---------------------------------------------------------


def as_curl(
    event: Event,
    target: Target,
    extra_headers: Mapping[str, str],
    timestamp: int,
    *,
    pruned: bool,
    inline_limit: int,
) -> str:
    """``forward``'s request for ``event`` at ``timestamp`` as a curl command line, the body on
    curl's stdin (written into the command up to ``inline_limit`` bytes). The target URL's
    password and configured header values are masked: they are credentials, shown nowhere else
    either."""
    headers = request_headers(event, target, extra_headers, timestamp)
    for name, value in _configured_headers(target.config).items():
        if headers.get(name) == value:  # not overridden by a protocol header
            headers[name] = mask(value) or ""
    lines = [
        f"# Signed for webhook-timestamp {timestamp}: targets refuse the signature once it is "
        "older than their tolerance (5 minutes in the Standard Webhooks libraries).",
    ]
    curl = [f"curl --silent --show-error {shlex.quote(mask_url(target.url) or '')}"]
    curl += [f"-H {shlex.quote(f'{name}: {value}')}" for name, value in headers.items()]
    curl.append("--data-binary @-")
    command = " \\\n  ".join(curl)
    if pruned:
        lines.append(
            "# The body was pruned after delivery (payload retention): the signature covers an "
            "empty body, and curl reads the body from stdin."
        )
        lines.append(command)
    elif len(event.body) > inline_limit:
        lines.append(
            f"# The body ({len(event.body)} bytes) is too long to write here: pipe it in, from "
            f"GET /admin/deliveries/{event.id} with jq -j .body (a binary one: "
            "jq -r .body_base64 | base64 -d)."
        )
        lines.append(command)
    elif _shell_safe(event.body):
        lines.append(f"printf '%s' {shlex.quote(event.body.decode())} | {command}")
    else:  # binary, or a NUL that no command-line argument can carry
        encoded = base64.b64encode(event.body).decode("ascii")
        lines.append(f"printf '%s' {encoded} | base64 -d | {command}")
    return "\n".join(lines) + "\n"


def _shell_safe(body: bytes) -> bool:
    try:
        return "\0" not in body.decode()
    except UnicodeDecodeError:
        return False

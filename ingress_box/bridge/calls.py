"""One HTTP call of a bridge (to Chatwoot or a gateway), within the attempt's deadline.

Every call of one attempt shares the attempt's deadline (``HandlerContext.timeout``), so an
attempt never outlives its lease however many calls it makes. Transport failures, timeouts, 408,
429 and 5xx become :class:`~ingress_box.errors.RetryLater`; other answers are returned for the
caller to read. Errors name the method and the path only: no query string (Chatwoot's contact
search carries a phone number), no header (the credentials).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ..errors import PermanentFailure, RetryLater

RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self, what: str) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise RetryLater(f"timeout: the attempt's deadline passed before {what}")
        return remaining


def _where(method: str, url: str) -> str:
    return f"{method} {httpx.URL(url).path}"


def call(
    client: httpx.Client,
    deadline: Deadline,
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    unsent: Callable[[], None] | None = None,
    **options: Any,
) -> httpx.Response:
    """The answer to one request: 2xx, or a 4xx that is not 408/429 (the caller decides).

    ``unsent`` is called when the request surely never reached the server (the connection was
    refused or not made in time): a caller that must not repeat a request tells the two apart.
    """
    where = _where(method, url)
    try:
        response = client.request(
            method, url, headers=dict(headers), timeout=deadline.left(where), **options
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if unsent is not None:
            unsent()
        raise RetryLater(f"connection error: {where}: {type(exc).__name__}") from exc
    except httpx.TimeoutException as exc:
        raise RetryLater(f"timeout: {where}") from exc
    except httpx.InvalidURL as exc:
        raise PermanentFailure(f"invalid URL for {where}") from exc
    except httpx.HTTPError as exc:  # refused, reset, a broken answer
        raise RetryLater(f"connection error: {where}: {type(exc).__name__}") from exc
    status = response.status_code
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryLater(f"HTTP {status} from {where}", status_code=status)
    return response


def ok(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; PermanentFailure for any other (it is a 4xx by now)."""
    where = _where(response.request.method, str(response.request.url))
    if not 200 <= response.status_code < 300:
        excerpt = response.text.strip()[:200]
        raise PermanentFailure(
            f"HTTP {response.status_code} from {where}: {excerpt}",
            status_code=response.status_code,
        )
    try:
        return response.json()
    except ValueError:
        return None


def fetch(
    client: httpx.Client,
    deadline: Deadline,
    url: str,
    headers: Mapping[str, str],
    cap: int,
) -> tuple[bytes, str | None] | None:
    """The bytes at ``url`` and their content type; None when they are gone or over ``cap``."""
    where = _where("GET", url)
    try:
        with client.stream("GET", url, headers=dict(headers), timeout=deadline.left(where)) as r:
            if r.status_code in RETRYABLE_STATUSES or r.status_code >= 500:
                raise RetryLater(f"HTTP {r.status_code} from {where}", status_code=r.status_code)
            if not 200 <= r.status_code < 300:  # gone: the caller says so in a placeholder
                return None
            chunks, size = [], 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > cap:
                    return None
                chunks.append(chunk)
            return b"".join(chunks), r.headers.get("content-type")
    except httpx.TimeoutException as exc:
        raise RetryLater(f"timeout: {where}") from exc
    except httpx.HTTPError as exc:
        raise RetryLater(f"connection error: {where}: {type(exc).__name__}") from exc

"""What every HTTP module shares: the error table, the one error body, JSON bodies and pages.

Each error this package raises on purpose has one row in :data:`ERRORS`: its HTTP status and the
``code`` of the ``{"error": {"code": ..., "message": ...}}`` body. The admin API, the dashboard's
JSON routes and ``/metrics`` answer through :func:`error_response`; the provider endpoint builds
the same body with :func:`ingress_box.errors.error_document`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    AlreadyExists,
    AlreadyPending,
    BodyTooLarge,
    InvalidInput,
    InvalidJson,
    MappingConflict,
    NoTarget,
    NotFound,
    PayloadPruned,
    StillRejected,
    StorageUnavailable,
    error_document,
)
from ..store.pages import Page, clamp_limit
from .auth import Verdict
from .box import Box

log = logging.getLogger("ingress_box.web")
T = TypeVar("T")

MAX_BODY_BYTES = 1 << 20  # admin requests are small; never buffer an unbounded body

# The most specific class wins (an InvalidJson is an InvalidInput too).
ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidJson: (400, "invalid_json"),
    BodyTooLarge: (413, "body_too_large"),
    InvalidInput: (400, "invalid_input"),
    NotFound: (404, "not_found"),
    AlreadyExists: (409, "already_exists"),
    MappingConflict: (409, "mapping_conflict"),
    StillRejected: (409, "still_rejected"),
    NoTarget: (409, "no_target"),
    AlreadyPending: (409, "already_pending"),
    PayloadPruned: (409, "body_pruned"),
    StorageUnavailable: (503, "storage_unavailable"),
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}  # the router's own answers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_document(code, message), status_code=status, headers=headers)


def refusal(verdict: Verdict) -> Response:
    """The answer to a token that was refused (401) or not even looked at (429)."""
    if verdict.retry_after:
        return error_response(
            429,
            "rate_limited",
            f"too many wrong admin tokens from this address: retry in {verdict.retry_after} s",
            {"retry-after": str(verdict.retry_after)},
        )
    return error_response(
        401,
        "unauthorized",
        "a valid admin bearer token is required",
        {"www-authenticate": "Bearer"},
    )


def known(exc: Exception) -> tuple[int, str] | None:
    """The status and code of the row of ``exc`` in :data:`ERRORS` (None: not raised on purpose)."""
    for kind in type(exc).__mro__:
        if kind in ERRORS:
            return ERRORS[kind]
    return None


def translate(exc: Exception) -> JSONResponse:
    """The response for an exception raised while handling a request."""
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, exc.detail, dict(exc.headers or {}))
    found = known(exc)
    if found is not None:
        status, code = found
        headers = None
        if isinstance(exc, StorageUnavailable):
            headers = {"retry-after": str(exc.retry_after)}
        return error_response(status, code, str(exc), headers)
    log.error("request failed", exc_info=exc)
    return error_response(500, "internal_error", "internal error (see the server log)")


# -- request bodies -----------------------------------------------------------------------------


async def json_object(request: Request, *allowed: str) -> dict[str, Any]:
    """The body as a JSON object with only ``allowed`` keys (an empty body is ``{}``)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        # NaN and infinities are not JSON and could not be answered back (allow_nan=False).
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from exc
    try:
        # What is stored is answered back: text that cannot be UTF-8 (a lone surrogate such as
        # "\ud800" is a valid JSON escape) would fail SQLite or the answer, after the commit.
        _encode(data)
    except UnicodeEncodeError as exc:
        raise InvalidInput("text must be valid Unicode (no lone surrogates)") from exc
    except RecursionError as exc:
        raise InvalidInput("the body is nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}")
    return data


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInput(f"{name} must be a non-empty string")
    return value


# -- answers ------------------------------------------------------------------------------------


def _encode(value: Any) -> bytes:
    # What JSONResponse does, so that a value that passes here renders there.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _encoded_item(item: dict[str, Any]) -> bytes:
    """``item`` as JSON; a field that cannot be rendered (a row stored before today's checks:
    nested too deep, not UTF-8) is shown as null and named in ``"unreadable"``."""
    try:
        return _encode(item)
    except (ValueError, TypeError, RecursionError):
        pass
    bad = []
    for name, value in item.items():
        try:
            _encode(value)
        except (ValueError, TypeError, RecursionError):
            bad.append(name)
    log.warning("unreadable row", extra={"fields": {"fields": ",".join(bad)}})
    return _encode({**item, **dict.fromkeys(bad), "unreadable": bad})


def item_json(item: dict[str, Any], status_code: int = 200) -> Response:
    """One row as JSON; see :func:`_encoded_item` for a row that cannot be shown whole."""
    return Response(_encoded_item(item), status_code, media_type="application/json")


# -- lists --------------------------------------------------------------------------------------


def page_args(request: Request) -> tuple[str | None, int]:
    """``?cursor=`` and ``?limit=`` of a list request."""
    return request.query_params.get("cursor") or None, clamp_limit(
        request.query_params.get("limit")
    )


def page_json(page: Page[T], render: Callable[[T], dict[str, Any]]) -> Response:
    """A list answer, each item rendered on its own: one bad row never breaks the list."""
    items = b",".join(_encoded_item(render(item)) for item in page.items)
    body = b'{"items":[%s],"next_cursor":%s}' % (items, _encode(page.next_cursor))
    return Response(body, media_type="application/json")


def base_url(request: Request, box: Box) -> str:
    """Where providers reach this box: the configured public URL, else this request's."""
    return box.settings.public_url or f"{request.url.scheme}://{request.url.netloc}"

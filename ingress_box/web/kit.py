"""What every HTTP module shares: the error table, the one error body, JSON bodies and pages.

Each error this package raises on purpose has one row in :data:`ERRORS`: its HTTP status and the
``code`` of the ``{"error": {"code": ..., "message": ...}}`` body. The admin API, the dashboard's
JSON routes and ``/metrics`` answer through :func:`error_response`; the provider endpoint builds
the same body with :func:`ingress_box.errors.error_document`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import (
    AlreadyExists,
    BodyTooLarge,
    InvalidInput,
    InvalidJson,
    MappingConflict,
    NotFound,
    StorageUnavailable,
    error_document,
)
from ..store.pages import Page, clamp_limit
from .box import Box

log = logging.getLogger("ingress_box.web")

MAX_BODY_BYTES = 1 << 20  # admin requests are small; never buffer an unbounded body

# The most specific class wins (an InvalidJson is an InvalidInput too).
ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidJson: (400, "invalid_json"),
    BodyTooLarge: (413, "body_too_large"),
    InvalidInput: (400, "invalid_input"),
    NotFound: (404, "not_found"),
    AlreadyExists: (409, "already_exists"),
    MappingConflict: (409, "mapping_conflict"),
    StorageUnavailable: (503, "storage_unavailable"),
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}  # the router's own answers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_document(code, message), status_code=status, headers=headers)


def translate(exc: Exception) -> JSONResponse:
    """The response for an exception raised while handling a request."""
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, exc.detail, dict(exc.headers or {}))
    for kind in type(exc).__mro__:
        if kind in ERRORS:
            status, code = ERRORS[kind]
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


# -- lists --------------------------------------------------------------------------------------


def page_args(request: Request) -> tuple[str | None, int]:
    """``?cursor=`` and ``?limit=`` of a list request."""
    return request.query_params.get("cursor") or None, clamp_limit(
        request.query_params.get("limit")
    )


def page_json(page: Page[Any], items: list[Any] | None = None) -> JSONResponse:
    return JSONResponse(
        {"items": page.items if items is None else items, "next_cursor": page.next_cursor}
    )


def base_url(request: Request, box: Box) -> str:
    """Where providers reach this box: the configured public URL, else this request's."""
    return box.settings.public_url or f"{request.url.scheme}://{request.url.netloc}"

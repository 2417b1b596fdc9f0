"""The admin API under ``/admin``: JSON in and out, a bearer token, one error shape.

Everything under ``/admin`` passes through :class:`AdminGuard`, which checks the token before
routing (so an unauthenticated caller cannot learn which paths exist) and turns every error into
``{"error": {"code": ..., "message": ...}}``. Handlers translate a request into calls on the
store and on :mod:`ingress_box.instances`; writes go through the database's single writer.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import instance_rules
from ..errors import AlreadyExists, InvalidInput, MappingConflict, NotFound, StorageUnavailable
from ..plugins import plugin_to_json
from ..store import dead_letters as store_dead_letters
from ..store import deliveries as store_deliveries
from ..store import instances as store_instances
from ..store.pages import MAX_LIMIT, Page, clamp_limit

if TYPE_CHECKING:
    from ..app import Box

log = logging.getLogger("ingress_box.admin")

MAX_BODY_BYTES = 1 << 20  # admin requests are small; never buffer an unbounded body
DELIVERY_STATES = ("pending", "delivered", "dead")
DEFAULT_REDRIVE_LIMIT = 100


class InvalidJson(InvalidInput):
    """The body is not JSON (a distinct code, so a script can tell it from a bad value)."""


class BodyTooLarge(InvalidInput):
    pass


# -- errors: one translator, one shape ------------------------------------------------------


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def translate(exc: Exception) -> JSONResponse:
    """The response for an exception raised while handling an admin request."""
    if isinstance(exc, HTTPException):  # the router's 404 and 405
        return error_response(
            exc.status_code,
            _HTTP_CODES.get(exc.status_code, "http_error"),
            exc.detail,
            dict(exc.headers or {}),
        )
    if isinstance(exc, InvalidJson):
        return error_response(400, "invalid_json", str(exc))
    if isinstance(exc, BodyTooLarge):
        return error_response(413, "body_too_large", str(exc))
    if isinstance(exc, InvalidInput):
        return error_response(400, "invalid_input", str(exc))
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, AlreadyExists):
        return error_response(409, "already_exists", str(exc))
    if isinstance(exc, MappingConflict):
        return error_response(409, "mapping_conflict", str(exc))
    if isinstance(exc, StorageUnavailable):
        return error_response(
            503, "storage_unavailable", str(exc), {"retry-after": str(exc.retry_after)}
        )
    log.error("admin request failed", exc_info=exc)
    return error_response(500, "internal_error", "internal error (see the server log)")


class AdminGuard:
    """ASGI middleware: the token first, then the routes, with every error in the JSON shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        box: Box = scope["app"].state.box
        if not box.auth.check(Request(scope).headers.get("authorization")):
            await error_response(
                401,
                "unauthorized",
                "a valid admin bearer token is required",
                {"www-authenticate": "Bearer"},
            )(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # too late for an error response: let the server log it
                raise
            await translate(exc)(scope, receive, send)


# -- request helpers ------------------------------------------------------------------------


def _box(request: Request) -> Box:
    box: Box = request.app.state.box
    return box


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


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInput(f"{name} must be a non-empty string")
    return value


def _page_args(request: Request) -> tuple[str | None, int]:
    return request.query_params.get("cursor") or None, clamp_limit(
        request.query_params.get("limit")
    )


def _page_json(page: Page[Any], items: list[Any] | None = None) -> JSONResponse:
    return JSONResponse(
        {"items": page.items if items is None else items, "next_cursor": page.next_cursor}
    )


def base_url(request: Request, box: Box) -> str:
    """Where providers reach this box: the configured public URL, else this request's."""
    return box.settings.public_url or f"{request.url.scheme}://{request.url.netloc}"


async def _instance(box: Box, plugin_id: str, instance_id: str) -> store_instances.Instance:
    inst = await store_instances.aget(box.db, plugin_id, instance_id)
    if inst is None:
        raise NotFound(f"no instance {plugin_id}/{instance_id}")
    return inst


# -- plugins and instances ------------------------------------------------------------------


class Plugins(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        items = [plugin_to_json(p) for p in _box(request).registry.all()]
        return JSONResponse({"items": items, "next_cursor": None})


class Instances(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        cursor, limit = _page_args(request)
        plugin_id = request.query_params.get("plugin") or None
        page = await store_instances.alist_page(_box(request).db, plugin_id, cursor, limit)
        return _page_json(page, [inst.to_json() for inst in page.items])

    async def post(self, request: Request) -> Response:
        box = _box(request)
        body = await json_object(request, "plugin", "instance", *instance_rules.CREATE_FIELDS)
        plugin_id, instance_id = body.pop("plugin", None), body.pop("instance", None)
        inst, shown = instance_rules.new_instance(
            box.registry, plugin_id, instance_id, body, box.clock()
        )
        await box.db.awrite(store_instances.insert(inst))
        created = instance_rules.created_json(box.registry, inst, shown, base_url(request, box))
        return JSONResponse(created, status_code=201)


class InstanceItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        inst = await _instance(_box(request), **_key(request))
        return JSONResponse(inst.to_json())

    async def patch(self, request: Request) -> Response:
        box = _box(request)
        body = await json_object(request, *instance_rules.PATCH_FIELDS, "secret")
        if "secret" in body:  # named apart so the caller learns where secrets change
            raise InvalidInput("secret cannot be patched: POST .../rotate-secret")
        changes = instance_rules.changes(body)
        key = _key(request)
        inst = await box.db.awrite(
            store_instances.update(key["plugin_id"], key["instance_id"], box.clock(), **changes)
        )
        return JSONResponse(inst.to_json())

    async def delete(self, request: Request) -> Response:
        key = _key(request)
        box = _box(request)
        await box.db.awrite(store_instances.delete(key["plugin_id"], key["instance_id"]))
        box.ingress.forget(key["plugin_id"], key["instance_id"])
        return Response(status_code=204)


def _key(request: Request) -> dict[str, str]:
    return {
        "plugin_id": request.path_params["plugin"],
        "instance_id": request.path_params["instance"],
    }


class RotateSecret(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        box = _box(request)
        current = await _instance(box, **_key(request))
        body = await json_object(request, "secret", "grace_seconds")
        grace = body.get("grace_seconds", box.settings.rotation_grace_hours * 3600)
        op, secret = instance_rules.rotation(
            box.registry, current, body.get("secret"), grace, box.clock()
        )
        inst = await box.db.awrite(op)
        return JSONResponse(
            {
                **inst.to_json(),
                "secret": secret,
                "previous_secret_valid_until": inst.previous_secret_until,
            }
        )


class Rejections(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        box = _box(request)
        inst = await _instance(box, **_key(request))
        items = box.ingress.rejections_json(inst.plugin_id, inst.instance_id)
        return JSONResponse({"items": items, "next_cursor": None})


# -- deliveries and dead letters ------------------------------------------------------------


class Deliveries(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        query = request.query_params
        state = query.get("state") or None
        if state is not None and state not in DELIVERY_STATES:
            raise InvalidInput(f"state must be one of {', '.join(DELIVERY_STATES)}")
        cursor, limit = _page_args(request)
        page = await store_deliveries.alist_page(
            _box(request).db,
            query.get("plugin") or None,
            query.get("instance") or None,
            state,
            cursor,
            limit,
        )
        return _page_json(page)


class DeliveryItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        found = await store_deliveries.aget(_box(request).db, request.path_params["id"])
        return JSONResponse(found)


class DeadLetters(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        query = request.query_params
        selection = store_dead_letters.Selection(
            query.get("plugin") or None, query.get("instance") or None
        )
        cursor, limit = _page_args(request)
        return _page_json(
            await store_dead_letters.alist_page(_box(request).db, selection, cursor, limit)
        )


class Redrive(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        box = _box(request)
        body = await json_object(request, "plugin", "instance", "ids", "limit")
        ids = body.get("ids")
        if ids is not None and not (
            isinstance(ids, list) and len(ids) <= MAX_LIMIT and all(isinstance(i, str) for i in ids)
        ):
            raise InvalidInput(f"ids must be a list of at most {MAX_LIMIT} strings")
        limit = body.get("limit", DEFAULT_REDRIVE_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidInput("limit must be a whole number")
        selection = store_dead_letters.Selection(
            _optional_text(body, "plugin"), _optional_text(body, "instance"), ids
        )
        redriven, remaining = await box.db.awrite(
            store_dead_letters.redrive(selection, clamp_limit(limit), box.clock())
        )
        if redriven and box.worker is not None:
            box.worker.wake()
        return JSONResponse({"redriven": redriven, "remaining": remaining})


class DeadLetterItem(HTTPEndpoint):
    async def delete(self, request: Request) -> Response:
        await _box(request).db.awrite(store_dead_letters.discard(request.path_params["id"]))
        return Response(status_code=204)


def routes() -> list[BaseRoute]:
    """The admin routes, mounted at ``/admin``; one guarded mount catches every path under it."""
    from . import mappings as admin_mappings

    return [
        Mount(
            "",
            routes=[
                Route("/plugins", Plugins),
                Route("/instances", Instances),
                Route("/instances/{plugin}/{instance}", InstanceItem),
                Route("/instances/{plugin}/{instance}/rotate-secret", RotateSecret),
                Route("/instances/{plugin}/{instance}/rejections", Rejections),
                Route("/deliveries", Deliveries),
                Route("/deliveries/{id}", DeliveryItem),
                Route("/dlq", DeadLetters),
                Route("/dlq/redrive", Redrive),
                Route("/dlq/{id}", DeadLetterItem),
                *admin_mappings.routes(),
            ],
            middleware=[Middleware(AdminGuard)],
        )
    ]


def top_level_routes() -> list[BaseRoute]:
    """Admin-guarded routes outside ``/admin`` (none yet)."""
    return []

"""The admin API under ``/admin``: JSON in and out, a bearer token, one error shape.

Everything under ``/admin`` passes through :class:`AdminGuard`, which checks the token before
routing (so an unauthenticated caller cannot learn which paths exist) and turns every error into
``{"error": {"code": ..., "message": ...}}``. Handlers translate a request into calls on the
store and on :mod:`ingress_box.instance_rules`; writes go through the database's single writer.
"""

from __future__ import annotations

from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import instance_health, instance_rules, listing, probe, quarantine
from ..errors import InvalidInput, NotFound
from ..plugins import plugin_to_json
from ..store import dead_letters as store_dead_letters
from ..store import deliveries as store_deliveries
from ..store import instances as store_instances
from ..store import probes as store_probes
from ..store import rejections as store_rejections
from ..store import replay as store_replay
from ..store.pages import MAX_LIMIT, clamp_limit
from ..values import check_time
from . import bridges, deliveries, mappings, openapi
from .box import Box, box_of
from .kit import (
    base_url,
    item_json,
    json_object,
    optional_text,
    page_args,
    page_json,
    refusal,
    translate,
)

DEFAULT_REDRIVE_LIMIT = 100


class AdminGuard:
    """ASGI middleware: the token first, then the routes, with every error in the JSON shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        box: Box = scope["app"].state.box
        request = Request(scope)
        verdict = box.auth.attempt(
            request.headers.get("authorization"),
            request.client.host if request.client else None,
            box.clock(),
            "api",
        )
        if not verdict.ok:
            await refusal(verdict)(scope, receive, send)
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


async def _instance(box: Box, plugin_id: str, instance_id: str) -> store_instances.Instance:
    inst = await store_instances.aget(box.db, plugin_id, instance_id)
    if inst is None:
        raise NotFound(f"no instance {plugin_id}/{instance_id}")
    return inst


# -- plugins and instances ------------------------------------------------------------------


class Plugins(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        items = [plugin_to_json(p) for p in box_of(request).registry.all()]
        return JSONResponse({"items": items, "next_cursor": None})


class Instances(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        cursor, limit = page_args(request)
        plugin_id = request.query_params.get("plugin") or None
        box = box_of(request)
        page = await store_instances.alist_page(box.db, plugin_id, cursor, limit)
        healths = await instance_health.aof(box.db, page.items, box.clock())
        return page_json(
            page, lambda i: instance_health.with_health(i, healths[i.plugin_id, i.instance_id])
        )

    async def post(self, request: Request) -> Response:
        box = box_of(request)
        body = await json_object(request, "plugin", "instance", *instance_rules.CREATE_FIELDS)
        plugin_id, instance_id = body.pop("plugin", None), body.pop("instance", None)
        inst, shown = instance_rules.new_instance(
            box.registry, plugin_id, instance_id, body, box.clock()
        )
        created = instance_rules.created_json(
            box.registry, inst, shown, base_url(request, box), secret_given="secret" in body
        )
        answer = item_json(created, 201)  # rendered before the commit: no 500 after it
        await box.db.awrite(store_instances.insert(inst))
        return answer


class InstanceItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        box = box_of(request)
        inst = await _instance(box, **_key(request))
        (found,) = (await instance_health.aof(box.db, [inst], box.clock())).values()
        return item_json(instance_health.with_health(inst, found))

    async def patch(self, request: Request) -> Response:
        box = box_of(request)
        body = await json_object(request, *instance_rules.PATCH_FIELDS, "secret")
        if "secret" in body:  # named apart so the caller learns where secrets change
            raise InvalidInput("secret cannot be patched: POST .../rotate-secret")
        changes = instance_rules.changes(box.registry, body)
        key = _key(request)
        inst = await box.db.awrite(
            store_instances.update(key["plugin_id"], key["instance_id"], box.clock(), **changes)
        )
        return item_json(inst.to_json())

    async def delete(self, request: Request) -> Response:
        key = _key(request)
        box = box_of(request)
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
        box = box_of(request)
        current = await _instance(box, **_key(request))
        body = await json_object(request, "secret", "grace_seconds")
        grace = body.get("grace_seconds", box.settings.rotation_grace_hours * 3600)
        op, secret = instance_rules.rotation(
            box.registry, current, body.get("secret"), grace, box.clock()
        )
        inst = await box.db.awrite(op)
        return item_json(
            {
                **inst.to_json(),
                "secret": secret,
                "previous_secret_valid_until": inst.previous_secret_until,
            }
        )


class Rejections(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        """The kept (admissible) refusals, a page at a time, and the in-memory record of the
        latest refusals for any reason."""
        box = box_of(request)
        inst = await _instance(box, **_key(request))
        cursor, limit = page_args(request)
        page = await store_rejections.alist_page(
            box.db, inst.plugin_id, inst.instance_id, cursor, limit
        )
        return JSONResponse(
            {
                "items": [kept.to_json() for kept in page.items],
                "next_cursor": page.next_cursor,
                "recent": box.ingress.rejections_json(inst.plugin_id, inst.instance_id),
            }
        )


async def _kept(request: Request) -> store_rejections.Rejection:
    key = _key(request)
    return await quarantine.find(
        box_of(request).db, key["plugin_id"], key["instance_id"], request.path_params["id"]
    )


class RejectionItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        kept = await _kept(request)
        return item_json(quarantine.detail_json(kept, box_of(request).registry))


class Admit(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        box = box_of(request)
        answer = await quarantine.admit(box.ingress, await _kept(request))
        if answer.outcome in quarantine.ADMITTED:
            assert answer.delivery_id is not None
            delivery = await store_deliveries.aget(box.db, answer.delivery_id)
            return item_json(
                {
                    "admitted": True,
                    "duplicate": answer.outcome == "duplicate",
                    "delivery": delivery.to_json(),
                }
            )
        # Refused for something else now (instance disabled, rate limit, storage): as a
        # provider would hear it.
        return Response(answer.body, answer.status, answer.headers, answer.content_type)


class Unmatched(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        """Calls to ingress URLs that named nothing, per prefix, most first (this process's)."""
        counts = box_of(request).metrics.unmatched.counts
        items = [
            {"prefix": prefix, "count": count}
            for prefix, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        return JSONResponse({"items": items, "next_cursor": None})


class SendTestEvent(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        """Send a test event through the outbox and answer its first attempt's outcome
        (202 without it when the attempt does not end within the delivery timeout + 2 s)."""
        box = box_of(request)
        inst = await _instance(box, **_key(request))
        await json_object(request)  # nothing to say, but a body that says something is wrong
        event = probe.new_event(inst, box.clock())
        await box.db.awrite(store_probes.insert(event))
        box.wake_worker()
        attempt = await probe.await_first_attempt(
            box.db, event.id, probe.wait_seconds(box.settings)
        )
        return item_json(probe.result_json(event.id, attempt), 200 if attempt else 202)


# -- deliveries and dead letters ------------------------------------------------------------


class Deliveries(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        cursor, limit = page_args(request)
        page = await store_deliveries.alist_page(
            box_of(request).db, listing.filters_of(request.query_params), cursor, limit
        )
        return page_json(page, store_deliveries.Delivery.to_json)


class DeliveriesExport(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return await deliveries.export_response(box_of(request).db, request.query_params)


class DeliveryItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        found = await store_deliveries.aget(box_of(request).db, request.path_params["id"])
        return item_json(found.to_json())


class DeliveryReplay(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        box, delivery_id = box_of(request), request.path_params["id"]
        await box.db.awrite(store_replay.replay(delivery_id, box.clock()))
        box.wake_worker()
        return JSONResponse({"id": delivery_id, "state": "pending"}, status_code=202)


class Replay(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        box = box_of(request)
        body = await json_object(request, "plugin", "instance", "since", "until", "state", "limit")
        if "since" not in body:
            raise InvalidInput("since is required: unix seconds or an ISO 8601 time")
        limit = body.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise InvalidInput("limit must be a whole number")
        if limit is not None and limit < 1:
            raise InvalidInput("limit must be at least 1")
        selection = store_replay.Range(
            since=check_time("since", body["since"]),
            until=None if body.get("until") is None else check_time("until", body["until"]),
            plugin_id=optional_text(body, "plugin"),
            instance_id=optional_text(body, "instance"),
            state=optional_text(body, "state"),
        )
        result = await store_replay.areplay_range(box.db, selection, limit, box.clock)
        if result.replayed:
            box.wake_worker()
        return JSONResponse(result.to_json())


class DeadLetters(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        query = request.query_params
        selection = store_dead_letters.Selection(
            query.get("plugin") or None, query.get("instance") or None
        )
        cursor, limit = page_args(request)
        page = await store_dead_letters.alist_page(box_of(request).db, selection, cursor, limit)
        return page_json(page, store_dead_letters.DeadLetter.to_json)


class Redrive(HTTPEndpoint):
    async def post(self, request: Request) -> Response:
        box = box_of(request)
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
            optional_text(body, "plugin"), optional_text(body, "instance"), ids
        )
        redriven, remaining = await store_dead_letters.aredrive(
            box.db, selection, clamp_limit(limit), box.clock
        )
        if redriven:
            box.wake_worker()
        return JSONResponse({"redriven": redriven, "remaining": remaining})


class DeadLetterItem(HTTPEndpoint):
    async def delete(self, request: Request) -> Response:
        await box_of(request).db.awrite(store_dead_letters.discard(request.path_params["id"]))
        return Response(status_code=204)


class OpenApi(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return JSONResponse(openapi.document())


def routes() -> list[BaseRoute]:
    """The admin routes, mounted at ``/admin``; one guarded mount catches every path under it."""

    return [
        Mount(
            "",
            routes=[
                Route("/openapi.json", OpenApi),
                Route("/plugins", Plugins),
                Route("/instances", Instances),
                Route("/instances/{plugin}/{instance}", InstanceItem),
                Route("/instances/{plugin}/{instance}/rotate-secret", RotateSecret),
                Route("/instances/{plugin}/{instance}/rejections", Rejections),
                Route("/instances/{plugin}/{instance}/rejections/{id}", RejectionItem),
                Route("/instances/{plugin}/{instance}/rejections/{id}/admit", Admit),
                Route("/unmatched", Unmatched),
                Route("/instances/{plugin}/{instance}/test", SendTestEvent),
                Route("/deliveries", Deliveries),
                Route("/deliveries/export", DeliveriesExport),  # before {id}, which would match
                Route("/deliveries/{id}", DeliveryItem),
                Route("/deliveries/{id}/replay", DeliveryReplay),
                Route("/replay", Replay),
                Route("/dlq", DeadLetters),
                Route("/dlq/redrive", Redrive),
                Route("/dlq/{id}", DeadLetterItem),
                *mappings.routes(),
                *bridges.routes(),
            ],
            middleware=[Middleware(AdminGuard)],
        )
    ]

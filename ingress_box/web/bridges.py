"""The admin API's bridges: ``/admin/bridges`` (mounted by :mod:`admin`).

- ``POST /admin/bridges`` creates a bridge and its two instances in one transaction: ``201``
  with the masked bridge, ``gateway.secret`` and ``chatwoot.secret`` in full (shown this once),
  ``gateway_ingress_url``, ``chatwoot_ingress_url`` (carrying the Chatwoot secret) and
  ``setup`` (what to paste where); ``409`` when the bridge or either instance exists;
- ``GET /admin/bridges`` lists them (masked), each with its number of conversation mappings;
- ``GET /admin/bridges/{id}`` reads one, with its instances' ingress URLs (Chatwoot's without
  the secret: the signed account webhooks' URL) and its mapping count;
- ``DELETE /admin/bridges/{id}`` removes it and both instances (``204``).
"""

from __future__ import annotations

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import bridge_rules
from ..errors import NotFound
from ..store import bridges as store
from ..store.pages import Page
from .box import box_of
from .kit import base_url, item_json, json_object, page_json


class Bridges(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        box = box_of(request)
        bridges = await store.aevery(box.db)
        counts = await store.amapping_counts(box.db)
        base = base_url(request, box)
        return page_json(
            Page(bridges, None), lambda b: bridge_rules.read_json(b, base, counts.get(b.id, 0))
        )

    async def post(self, request: Request) -> Response:
        box = box_of(request)
        body = await json_object(request, *bridge_rules.FIELDS)
        bridge, instances, shown = bridge_rules.new_bridge(box.registry, body, box.clock())
        created = bridge_rules.created_json(bridge, shown, base_url(request, box))
        answer = item_json(created, 201)  # rendered before the commit: no 500 after it
        await box.db.awrite(store.insert(bridge, instances))
        return answer


class BridgeItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        box = box_of(request)
        bridge_id = request.path_params["id"]
        bridge = await store.aget(box.db, bridge_id)
        if bridge is None:
            raise NotFound(f"no bridge {bridge_id}")
        counts = await store.amapping_counts(box.db)
        return item_json(
            bridge_rules.read_json(bridge, base_url(request, box), counts.get(bridge.id, 0))
        )

    async def delete(self, request: Request) -> Response:
        box = box_of(request)
        bridge: store.Bridge = await box.db.awrite(store.delete(request.path_params["id"]))
        for plugin_id, instance_id in bridge.instances:
            box.ingress.forget(plugin_id, instance_id)
        return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [Route("/bridges", Bridges), Route("/bridges/{id}", BridgeItem)]

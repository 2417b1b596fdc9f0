"""The admin API's conversation mappings: ``/admin/mappings`` (mounted by :mod:`admin`).

- ``PUT /admin/mappings`` upserts on the forward key: ``200`` with the mapping and
  ``"created"`` (true when it made a new mapping, false when it re-pointed or refreshed an
  existing one; an upsert answers alike either way); ``409 mapping_conflict`` when the
  conversation is bound to another chat (the message names that chat and its session);
- ``GET /admin/mappings?plugin=&instance=&session=&chat=&conversation=&state=&limit=&cursor=``
  lists (every filter optional), ``GET /admin/mappings/{id}`` reads one;
- ``PATCH /admin/mappings/{id}`` ``{"state", "metadata"?}`` changes the handover state;
- ``DELETE /admin/mappings/{id}`` removes one, freeing its conversation (``204``).
"""

from __future__ import annotations

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import mapping_rules
from ..errors import InvalidInput, NotFound
from ..store import mappings as store
from ..store.pages import clamp_limit
from .box import box_of
from .kit import item_json, json_object, page_json

_FILTERS = ("plugin", "instance", "session", "chat", "conversation", "state")


def _id(request: Request) -> int:
    mapping_id: int = request.path_params["id"]
    if mapping_id >= 2**63:  # past SQLite's integers: no such row (and no OverflowError)
        raise NotFound(f"no mapping {mapping_id}")
    return mapping_id


class Mappings(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        query = request.query_params
        given = {name: query.get(name) or None for name in _FILTERS}
        if given["state"] is not None:
            mapping_rules.check_state(given["state"])
        selection = store.Filter(
            plugin_id=given["plugin"],
            instance_id=given["instance"],
            session=given["session"],
            chat=given["chat"],
            conversation=given["conversation"],
            state=given["state"],
        )
        page = await store.alist_page(
            box_of(request).db,
            selection,
            query.get("cursor") or None,
            clamp_limit(query.get("limit")),
        )
        return page_json(page, store.ConversationMapping.to_json)

    async def put(self, request: Request) -> Response:
        box = box_of(request)
        body = await json_object(request, *mapping_rules.UPSERT_FIELDS)
        upsert = mapping_rules.upsert_of(box.registry, body)
        mapping, created = await box.db.awrite(store.upsert(upsert, box.clock()))
        return item_json({**mapping.to_json(), "created": created})


class MappingItem(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        mapping_id = _id(request)
        mapping = await store.aget(box_of(request).db, mapping_id)
        if mapping is None:
            raise NotFound(f"no mapping {mapping_id}")
        return item_json(mapping.to_json())

    async def patch(self, request: Request) -> Response:
        box = box_of(request)
        body = await json_object(request, "state", "metadata")
        if "state" not in body:
            raise InvalidInput("state is required")
        metadata = body.get("metadata")
        mapping = await box.db.awrite(
            store.set_state(
                _id(request),
                mapping_rules.check_state(body["state"]),
                None if metadata is None else mapping_rules.check_metadata(metadata),
                box.clock(),
            )
        )
        return item_json(mapping.to_json())

    async def delete(self, request: Request) -> Response:
        await box_of(request).db.awrite(store.delete(_id(request)))
        return Response(status_code=204)


def routes() -> list[BaseRoute]:
    """Mounted inside the admin mount, so the token guard and error shape apply."""
    return [
        Route("/mappings", Mappings),
        # :int so "/mappings/abc" is a plain 404; ids are 64-bit integers on either engine.
        Route("/mappings/{id:int}", MappingItem),
    ]

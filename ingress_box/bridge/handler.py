"""The ``bridge`` handler: the entry point of both of a bridge's instances.

An instance made for a bridge (``<gateway kind>/<id>`` and ``chatwoot/<id>``) carries the
bridge's id in its config (``{"bridge": id}``); the event's plugin says which way it goes. The
bridge row is read once per attempt, so a changed bridge counts from the next attempt on.
"""

from __future__ import annotations

from ..delivery import Event, HandlerContext
from ..errors import PermanentFailure
from ..store import bridges
from . import inbound, outbound


def bridge(event: Event, ctx: HandlerContext) -> None:
    """Move ``event`` across its bridge: Chatwoot's to WhatsApp, a gateway's to Chatwoot."""
    if ctx.db is None:
        raise PermanentFailure("the bridge handler needs the box's database")
    bridge_id = ctx.target.config.get("bridge")
    if not isinstance(bridge_id, str):
        raise PermanentFailure('the instance\'s config has no "bridge" id')
    found = bridges.get(ctx.db, bridge_id)
    if found is None:
        raise PermanentFailure(f"bridge {bridge_id!r} does not exist")
    if event.plugin == "chatwoot":
        outbound.handle(found, ctx.db, event, ctx)
    elif event.plugin == found.gateway.kind:
        inbound.handle(found, ctx.db, event, ctx)
    else:
        raise PermanentFailure(f"bridge {bridge_id!r} has no {event.plugin} side")

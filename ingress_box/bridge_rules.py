"""Creating bridges: the checks, the two instances and what to paste where, for both edges.

The admin API and the CLI hand this module the decoded request (or the flags as the same shape)
and get back a :class:`~ingress_box.store.bridges.Bridge`, the two instances to store with it,
and the webhook secrets to show exactly once. Values arrive as ``object``: they come from
untrusted JSON.

A bridge ``shop`` of a WAHA gateway owns the instances ``waha/shop`` (the gateway's webhooks)
and ``chatwoot/shop`` (Chatwoot's), both with the handler ``bridge``, the gateway's session, the
``progress`` lane policy and no target URL: the handler delivers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from .errors import InvalidInput
from .instance_rules import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    check_text,
    check_url,
    new_instance,
)
from .plugins import Registry
from .store.bridges import GATEWAY_KINDS, HANDLER, Bridge, Chatwoot, Gateway
from .store.instances import INSTANCE_ID, Instance
from .values import check_document

ROUTE = "events"  # the one route of every gateway plugin and of chatwoot
# The query parameter of the Chatwoot URL that carries the instance secret: Chatwoot before
# 4.13 signs no API-inbox webhook, so the URL is that webhook's only credential. The chatwoot
# manifest names it too (``url_secret_param``), and stored subpaths redact it.
URL_SECRET_PARAM = "secret"

FIELDS = ("id", "gateway", "chatwoot", "options")
GATEWAY_FIELDS = ("kind", "url", "api_key", "session", "secret")
CHATWOOT_FIELDS = ("url", "account_id", "inbox_id", "api_token", "secret")
_MAX_ID = 2**63 - 1  # SQLite's integers


def _part(body: Mapping[str, object], name: str, allowed: tuple[str, ...]) -> Mapping[str, object]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a JSON object with {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown field {name}.{unknown[0]}")
    return value


def _required(part: Mapping[str, object], name: str) -> object:
    """``part``'s field named by the last component of ``name`` (``gateway.url``)."""
    key = name.rpartition(".")[2]
    if key not in part:
        raise InvalidInput(f"{name} is required")
    return part[key]


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise InvalidInput(f"{name} must be a whole number >= 1")
    return value


def new_bridge(
    registry: Registry, body: Mapping[str, object], now: float
) -> tuple[Bridge, list[Instance], dict[str, str]]:
    """A valid new bridge, its two instances, and their secrets by side (``gateway``,
    ``chatwoot``), generated where not given: to store together and show once."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}")
    bridge_id = _required(body, "id")
    if not isinstance(bridge_id, str) or not INSTANCE_ID.fullmatch(bridge_id):
        raise InvalidInput(f"id must match ^{INSTANCE_ID.pattern}$")
    g = _part(body, "gateway", GATEWAY_FIELDS)
    c = _part(body, "chatwoot", CHATWOOT_FIELDS)
    kind = _required(g, "gateway.kind")
    if not isinstance(kind, str) or kind not in GATEWAY_KINDS:
        raise InvalidInput(f"gateway.kind must be one of {', '.join(GATEWAY_KINDS)}")
    gateway = Gateway(
        kind=kind,
        url=check_url("gateway.url", _required(g, "gateway.url")),
        session=check_text("gateway.session", _required(g, "gateway.session")),
        api_key=check_text("gateway.api_key", _required(g, "gateway.api_key")),
    )
    chatwoot = Chatwoot(
        url=check_url("chatwoot.url", _required(c, "chatwoot.url")),
        account_id=_positive("chatwoot.account_id", _required(c, "chatwoot.account_id")),
        inbox_id=_positive("chatwoot.inbox_id", _required(c, "chatwoot.inbox_id")),
        api_token=check_text("chatwoot.api_token", _required(c, "chatwoot.api_token")),
    )
    options = body.get("options", {})
    options = check_document("options", options, MAX_CONFIG_DEPTH, MAX_CONFIG_BYTES)
    bridge = Bridge(bridge_id, gateway, chatwoot, now, options)
    instances, shown = [], {}
    for side, plugin_id, given in (("gateway", kind, g), ("chatwoot", "chatwoot", c)):
        fields: dict[str, object] = {
            "session": gateway.session,
            "config": {"bridge": bridge_id},
            "lane_policy": "progress",
        }
        if "secret" in given:
            fields["secret"] = check_text(f"{side}.secret", given["secret"])
        inst, secrets = new_instance(registry, plugin_id, bridge_id, fields, now)
        # Not through the handler check of plain instances: "bridge" is registered by the
        # bridge package, and a bridge's instances are made only here.
        instances.append(replace(inst, handler=HANDLER))
        shown[side] = secrets["secret"]
    return bridge, instances, shown


def ingress_urls(bridge: Bridge, base_url: str, chatwoot_secret: str | None = None) -> list[str]:
    """The gateway's and Chatwoot's webhook URLs; Chatwoot's carries ``chatwoot_secret`` when
    given (the API inbox's ``webhook_url``), else it is the signed account webhooks' URL."""
    base = base_url.rstrip("/")
    (gateway_plugin, _), _ = bridge.instances
    gateway = f"{base}/ingress/{gateway_plugin}/{quote(bridge.id)}/{ROUTE}"
    chatwoot = f"{base}/ingress/chatwoot/{quote(bridge.id)}/{ROUTE}"
    if chatwoot_secret is not None:
        chatwoot += f"?{URL_SECRET_PARAM}={quote(chatwoot_secret, safe='')}"
    return [gateway, chatwoot]


def _gateway_setup(gateway: Gateway, url: str, secret: str) -> list[str]:
    def js(value: object) -> str:
        return json.dumps(value, separators=(", ", ": "))

    if gateway.kind == "waha":
        hook: dict[str, Any] = {"url": url, "events": ["message.any"], "hmac": {"key": secret}}
        return [
            f"WAHA: add to session {gateway.session!r}'s config.webhooks (when you create or "
            f"update the session): {js(hook)}"
        ]
    if gateway.kind == "evolution":
        hook = {
            "enabled": True,
            "url": url,
            "headers": {"X-Ingress-Token": secret},
            "events": ["MESSAGES_UPSERT", "SEND_MESSAGE"],
        }
        return [f"Evolution API: POST /webhook/set/{gateway.session} with {js({'webhook': hook})}"]
    if gateway.kind == "gowa":
        return [
            "GOWA: start it with the environment (or the flags --webhook, --webhook-secret)",
            f"  WHATSAPP_WEBHOOK={url}",
            f"  WHATSAPP_WEBHOOK_SECRET={secret}",
        ]
    hook = {"url": url, "events": ["message.received", "message.sent"], "secret": secret}
    return [f"OpenWA: POST /api/sessions/{gateway.session}/webhooks with {js(hook)}"]


def setup(bridge: Bridge, base_url: str, shown: Mapping[str, str]) -> list[str]:
    """What to paste where, line by line, for the secrets shown at creation."""
    gateway_url, inbox_url = ingress_urls(bridge, base_url, shown["chatwoot"])
    _, account_url = ingress_urls(bridge, base_url)
    return [
        *_gateway_setup(bridge.gateway, gateway_url, shown["gateway"]),
        f"Chatwoot: the API inbox {bridge.chatwoot.inbox_id}'s webhook URL = {inbox_url}",
        "Chatwoot, also for signed conversation events (4.11.2+): Settings > Integrations > "
        f"Webhooks, add {account_url} with conversation_updated, conversation_status_changed "
        "and message_created ticked; Chatwoot signs it with the secret it shows for it, which "
        "must be the chatwoot secret (create the bridge with --chatwoot-secret set to it, or "
        f"run: ingress-box instances rotate chatwoot {bridge.id} --secret ...)",
    ]


def created_json(bridge: Bridge, shown: Mapping[str, str], base_url: str) -> dict[str, Any]:
    """The answer to a create: the masked bridge, then what is shown this once."""
    data = bridge.to_json()
    data["gateway"]["secret"] = shown["gateway"]
    data["chatwoot"]["secret"] = shown["chatwoot"]
    gateway_url, chatwoot_url = ingress_urls(bridge, base_url, shown["chatwoot"])
    return {
        **data,
        "gateway_ingress_url": gateway_url,
        "chatwoot_ingress_url": chatwoot_url,
        "setup": setup(bridge, base_url, shown),
    }


def read_json(bridge: Bridge, base_url: str, mappings: int) -> dict[str, Any]:
    """A bridge as reads show it: masked, with its instances' URLs (Chatwoot's without the
    secret: the signed account webhooks' URL) and its number of conversation mappings."""
    urls = ingress_urls(bridge, base_url)
    return {
        **bridge.to_json(),
        "instances": [
            {"plugin": plugin, "instance": instance, "ingress_url": url}
            for (plugin, instance), url in zip(bridge.instances, urls, strict=True)
        ],
        "gateway_ingress_url": urls[0],
        "chatwoot_ingress_url": urls[1],
        "mappings": mappings,
    }

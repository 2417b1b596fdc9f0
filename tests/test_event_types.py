"""Each delivery's event type, where its plugin knows one: read from what the provider sends,
stored with the delivery, listed, and filtered on (``?event_type=``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import Clock
from signers import SIGNERS
from starlette.testclient import TestClient

from ingress_box.errors import ManifestError
from ingress_box.plugins import parse_manifest

pytestmark = pytest.mark.both_stores

Headers = dict[str, str]
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# What each provider's secret looks like (the ones it issues are checked for their form).
SECRETS = {
    "stripe": "whsec_test_0123456789abcdef",
    "standard-webhooks": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "supabase": "v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "twilio": "12345678901234567890123456789012",
}
ROUTES = {"meta": "webhook", "twilio": "messages", "telegram": "updates"}


def meta_change(field: str) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": field, "value": {"statuses": []}}]}],
    }


def send(
    client: TestClient,
    admin_headers: Headers,
    clock: Clock,
    plugin: str,
    body: bytes,
    content_type: str = JSON,
    msg_id: str | None = None,
    **extra: str,
) -> dict[str, Any]:
    """Make ``plugin``'s instance `main` (once), POST ``body`` signed as that provider signs, and
    answer the delivery as ``GET /admin/deliveries`` lists it."""
    secret = SECRETS.get(plugin, "an-instance-secret-0123456789")
    if client.get(f"/admin/instances/{plugin}/main", headers=admin_headers).status_code == 404:
        made = client.post(
            "/admin/instances",
            headers=admin_headers,
            json={"plugin": plugin, "instance": "main", "secret": secret},
        )
        assert made.status_code == 201, made.text
    path = f"/ingress/{plugin}/main/{ROUTES.get(plugin, 'events')}"
    signed = SIGNERS[plugin](
        secret, body, at=int(clock()), msg_id=msg_id, url="http://testserver" + path
    )
    headers = {"content-type": content_type, **signed, **extra}
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    items = client.get(
        "/admin/deliveries", params={"plugin": plugin}, headers=admin_headers
    ).json()["items"]
    found: dict[str, Any] = items[0]
    return found


def event(data: Any) -> bytes:
    return json.dumps(data).encode()


CASES = [
    pytest.param("github", event({"zen": "hi", "hook_id": 1}), JSON, "ping", id="github-header"),
    pytest.param(
        "stripe",
        event({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded"}),
        JSON,
        "payment_intent.succeeded",
        id="stripe",
    ),
    pytest.param(
        "chatwoot",
        event({"event": "conversation_status_changed", "id": 5, "conversation": {"id": 7}}),
        JSON,
        "conversation_status_changed",
        id="chatwoot",
    ),
    pytest.param(
        "waha",
        event({"event": "session.status", "session": "default", "payload": {}}),
        JSON,
        "session.status",
        id="waha",
    ),
    pytest.param(
        "evolution",
        event({"event": "connection.update", "instance": "shop", "data": {}}),
        JSON,
        "connection.update",
        id="evolution",
    ),
    pytest.param(
        "gowa",
        event({"event": "message.ack", "device_id": "628000@s.whatsapp.net", "payload": {}}),
        JSON,
        "message.ack",
        id="gowa",
    ),
    pytest.param(
        "openwa",
        event({"event": "session.status", "sessionId": "s1", "data": {}}),
        JSON,
        "session.status",
        id="openwa-body",
    ),
    pytest.param("meta", event(meta_change("messages")), JSON, "messages", id="meta"),
    pytest.param(
        "twilio",
        urlencode(
            {"MessageSid": "SM1", "MessageStatus": "delivered", "SmsStatus": "sent"}
        ).encode(),
        FORM,
        "delivered",
        id="twilio-status",
    ),
    pytest.param(
        "twilio",
        urlencode({"MessageSid": "SM2", "SmsStatus": "received", "Body": "hi"}).encode(),
        FORM,
        "received",
        id="twilio-incoming",
    ),
    pytest.param(
        "standard-webhooks",
        event({"type": "invoice.paid", "data": {}}),
        JSON,
        "invoice.paid",
        id="standard-webhooks",
    ),
    pytest.param(
        "supabase",
        event({"type": "INSERT", "table": "orders", "record": {}}),
        JSON,
        "INSERT",
        id="supabase",
    ),
    pytest.param(
        "telegram",
        event({"update_id": 7, "callback_query": {"id": "1", "data": "x"}}),
        JSON,
        "callback_query",
        id="telegram-kind",
    ),
    pytest.param("generic", event({"type": "x"}), JSON, None, id="generic-knows-none"),
]


@pytest.mark.parametrize(("plugin", "body", "content_type", "expected"), CASES)
def test_each_plugin_that_knows_an_event_type_lists_it(
    client: TestClient,
    admin_headers: Headers,
    clock: Clock,
    plugin: str,
    body: bytes,
    content_type: str,
    expected: str | None,
) -> None:
    """A signed event of each provider is listed with the type its plugin reads from it."""
    listed = send(client, admin_headers, clock, plugin, body, content_type, msg_id="id-1")
    assert listed["event_type"] == expected


def test_a_header_type_comes_before_the_body(
    client: TestClient, admin_headers: Headers, clock: Clock
) -> None:
    """OpenWA's X-OpenWA-Event is read first; the body's /event only without it."""
    body = event({"event": "something.else", "data": {}})
    listed = send(
        client, admin_headers, clock, "openwa", body, msg_id="k-1", **{"x-openwa-event": "m.new"}
    )
    assert listed["event_type"] == "m.new"


@pytest.mark.parametrize(
    "value",
    [pytest.param("x" * 129, id="too-long"), pytest.param("\ud800", id="lone-surrogate")],
)
def test_a_type_that_is_not_short_text_is_absent(
    client: TestClient, admin_headers: Headers, clock: Clock, value: str
) -> None:
    """A type over 128 characters or not valid text is no type; the event is still accepted."""
    body = json.dumps({"type": value, "data": {}}).encode()  # ensure_ascii: "\ud800" as an escape
    listed = send(client, admin_headers, clock, "standard-webhooks", body)
    assert listed["event_type"] is None


def test_a_body_that_is_not_json_has_no_type(
    client: TestClient, admin_headers: Headers, clock: Clock
) -> None:
    """On a route that reads the type from JSON, a body that is not JSON is simply untyped."""
    listed = send(client, admin_headers, clock, "gowa", b"not json at all")
    assert listed["event_type"] is None


def test_the_list_filters_on_the_event_type(
    client: TestClient, admin_headers: Headers, clock: Clock
) -> None:
    """?event_type= keeps only the deliveries of that type."""
    paid = send(client, admin_headers, clock, "standard-webhooks", event({"type": "paid", "n": 1}))
    send(client, admin_headers, clock, "standard-webhooks", event({"type": "refunded", "n": 2}))
    items = client.get(
        "/admin/deliveries", params={"event_type": "paid"}, headers=admin_headers
    ).json()["items"]
    assert [i["id"] for i in items] == [paid["id"]]


def test_an_event_type_source_must_name_somewhere() -> None:
    """An empty event_type table is a manifest error naming the field."""
    manifest = {
        "id": "acme",
        "name": "Acme",
        "routes": {"hooks": {"verify": {"scheme": "hmac", "header": "X-Sig"}, "event_type": {}}},
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest, "acme.toml")
    assert info.value.field == "routes.hooks.event_type.headers"

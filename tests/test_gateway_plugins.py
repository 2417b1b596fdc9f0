"""The four WhatsApp gateway plugins (waha, evolution, gowa, openwa) through the real box.

Each gateway double posts its webhooks, signed and retried as the real gateway does, over HTTP to
the box running under uvicorn; the box forwards to a local fake target. What is asserted is what
the gateway saw (its attempts' statuses), what the ``deliveries`` table holds, and what the
target received.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from doubles.base import Delivery
from doubles.evolution import FakeEvolution
from doubles.gateway import Inbound
from doubles.gowa import FakeGOWA
from doubles.openwa import FakeOpenWA
from doubles.waha import FakeWAHA, WahaRetries
from fake_target import FakeTarget, Received, running_target
from live import LiveBox, add_instance, running_box
from signers import SIGNERS
from waiting import eventually

from ingress_box.config import Settings
from ingress_box.errors import ManifestError
from ingress_box.extract import (
    BadDeliveryId,
    Body,
    body_hash,
    conversation_id,
    provider_delivery_id,
    stored_body,
)
from ingress_box.plugins import Route, parse_manifest

pytestmark = pytest.mark.both_stores

SECRET = "gateway-webhook-secret"
CHAT = "628111"
FAST = 0.01  # the doubles' retry delays, scaled down


@dataclass
class Rig:
    live: LiveBox
    target: FakeTarget
    plugin: str

    @property
    def url(self) -> str:
        return f"{self.live.url}/ingress/{self.plugin}/main/events"

    def rows(self) -> list[dict[str, Any]]:
        rows = self.live.box.db.read(
            "SELECT provider_delivery_id, conversation FROM deliveries"
            " WHERE plugin_id = ? ORDER BY seq",
            (self.plugin,),
        )
        return [dict(row) for row in rows]

    def forwarded(self, count: int) -> list[Received]:
        """Exactly ``count`` forwards, once every delivery stored so far is delivered."""
        eventually(self.settled, 15, "every delivery to be forwarded")
        got = self.target.received
        assert len(got) == count, [r.headers.get("ingress-box-delivery-id") for r in got]
        return got

    def settled(self) -> bool:
        row = self.live.box.db.read_one(
            "SELECT count(*) FROM deliveries WHERE plugin_id = ? AND state != 'delivered'",
            (self.plugin,),
        )
        return row is not None and row[0] == 0


@contextlib.contextmanager
def rig(settings: Settings, plugin: str) -> Iterator[Rig]:
    with running_target() as target, running_box(settings) as live:
        add_instance(live.box, plugin, "main", SECRET, target_url=target.url)
        yield Rig(live, target, plugin)


def statuses(*deliveries: Delivery | Inbound) -> list[int | None]:
    """The status of every attempt of these webhooks, once they have all finished."""
    found: list[int | None] = []
    for one in deliveries:
        assert one.wait(15), "the gateway did not finish its webhooks"
        items = one.deliveries if isinstance(one, Inbound) else [one]
        found += [a.status for d in items for a in d.attempts]
    return found


def waha(r: Rig, secret: str = SECRET, **options: Any) -> FakeWAHA:
    options.setdefault("retries", WahaRetries(attempts=3))
    return FakeWAHA(r.url, hmac_key=secret, time_scale=FAST, **options)


def evolution(r: Rig, secret: str = SECRET, **options: Any) -> FakeEvolution:
    headers = {"X-Ingress-Token": secret}
    return FakeEvolution(r.url, webhook_headers=headers, time_scale=FAST, **options)


def gowa(r: Rig, secret: str = SECRET, **options: Any) -> FakeGOWA:
    return FakeGOWA(r.url, secret=secret, time_scale=FAST, **options)


def openwa(r: Rig, secret: str = SECRET, **options: Any) -> FakeOpenWA:
    return FakeOpenWA(r.url, secret=secret, time_scale=FAST, **options)


# Each builds the gateway's double posting to the rig's box, signed with ``secret``.
MAKERS: dict[str, Callable[..., Any]] = {
    "waha": waha,
    "evolution": evolution,
    "gowa": gowa,
    "openwa": openwa,
}


# --- a signed message is accepted and forwarded with its chat --------------------------------


def test_waha_message_is_one_delivery_forwarded_with_the_chat(settings: Settings) -> None:
    """WAHA's message and message.any of one message: 202, one delivery keyed
    <session>:<key id>, forwarded once with the chat as the conversation."""
    with rig(settings, "waha") as r, waha(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        assert statuses(msg) == [202, 202]
        (forward,) = r.forwarded(1)
        assert r.rows() == [
            {"provider_delivery_id": f"default:{msg.key_id}", "conversation": "628111@c.us"}
        ]
    assert forward.headers["ingress-box-conversation"] == "628111@c.us"
    assert json.loads(forward.body)["payload"]["body"] == "hi"


def test_waha_own_message_in_a_group_keys_on_the_key_id_and_the_group(
    settings: Settings,
) -> None:
    """A group message's id ends in the sender: the key id (part 2) still dedups, the group
    (part 1) is the conversation, and a phone-typed message is keyed the same way."""
    with rig(settings, "waha") as r, waha(r) as gateway:
        group = gateway.inbound("120363@g.us", "hello all", participant="628222")
        mine = gateway.inbound(CHAT, "typed on the phone", from_me=True)
        assert statuses(group, mine) == [202, 202, 202]
        r.forwarded(2)
        assert r.rows() == [
            {"provider_delivery_id": f"default:{group.key_id}", "conversation": "120363@g.us"},
            {"provider_delivery_id": f"default:{mine.key_id}", "conversation": "628111@c.us"},
        ]


def test_evolution_message_is_forwarded_with_the_chat(settings: Settings) -> None:
    """Evolution's messages.upsert: 202, keyed <instance>:<key id>, the remoteJid forwarded."""
    with rig(settings, "evolution") as r, evolution(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        assert statuses(msg) == [202]
        (forward,) = r.forwarded(1)
        assert r.rows() == [
            {"provider_delivery_id": f"shop:{msg.key_id}", "conversation": "628111@s.whatsapp.net"}
        ]
    assert forward.headers["ingress-box-conversation"] == "628111@s.whatsapp.net"


def test_evolution_lid_message_takes_the_phone_jid_as_the_conversation(
    settings: Settings,
) -> None:
    """A LID-addressed message (remoteJid @lid, remoteJidAlt the phone JID) is the phone's chat."""
    with rig(settings, "evolution") as r, evolution(r) as gateway:
        msg = gateway.inbound(CHAT, "hi", lid="1555")
        assert msg.payloads[0]["data"]["key"]["remoteJid"] == "1555@lid"
        assert statuses(msg) == [202]
        (forward,) = r.forwarded(1)
    assert forward.headers["ingress-box-conversation"] == "628111@s.whatsapp.net"


def test_gowa_message_is_forwarded_with_the_chat(settings: Settings) -> None:
    """GOWA's message: 202, keyed <device>:<id>, the chat_id forwarded."""
    with rig(settings, "gowa") as r, gowa(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        assert statuses(msg) == [202]
        (forward,) = r.forwarded(1)
        device = gateway.device_id
        assert r.rows() == [
            {
                "provider_delivery_id": f"{device}:{msg.key_id}",
                "conversation": "628111@s.whatsapp.net",
            }
        ]
    assert forward.headers["ingress-box-conversation"] == "628111@s.whatsapp.net"


def test_openwa_message_is_forwarded_with_the_chat(settings: Settings) -> None:
    """OpenWA's message.received: 202, keyed on its idempotency key, the chatId forwarded."""
    with rig(settings, "openwa") as r, openwa(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        assert statuses(msg) == [202]
        (forward,) = r.forwarded(1)
        key = msg.deliveries[0].headers["X-OpenWA-Idempotency-Key"]
        assert r.rows() == [{"provider_delivery_id": key, "conversation": "628111@c.us"}]
    assert key == f"msg_default_{msg.payloads[0]['data']['id']}"
    assert forward.headers["ingress-box-conversation"] == "628111@c.us"


# --- a wrong secret is refused ---------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["waha", "evolution", "gowa", "openwa"])
def test_a_webhook_signed_with_another_secret_is_401_and_stored_nowhere(
    settings: Settings, plugin: str
) -> None:
    """The gateway configured with another secret gets 401 on every try; nothing is stored."""
    with rig(settings, plugin) as r:
        options: dict[str, Any] = {"waha": {"retries": WahaRetries(attempts=2)}}.get(plugin, {})
        with MAKERS[plugin](r, "not-the-secret", **options) as gateway:
            found = statuses(gateway.inbound(CHAT, "forged"))
        assert found and set(found) == {401}
        assert r.rows() == []
    assert r.target.received == []


def test_evolution_without_the_token_header_is_401(settings: Settings) -> None:
    """Evolution's webhook without X-Ingress-Token set is refused."""
    with rig(settings, "evolution") as r:
        with FakeEvolution(r.url, time_scale=FAST) as gateway:
            assert statuses(gateway.inbound(CHAT, "no token")) == [401]
        assert r.rows() == []


def test_evolution_api_key_in_the_body_is_never_stored_nor_forwarded(settings: Settings) -> None:
    """Evolution puts its API key at /apikey of every webhook: the stored body (and so the
    forwarded one) has it replaced, the rest of the event kept; dedup still reads the raw body."""
    with rig(settings, "evolution") as r, evolution(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        again = gateway.event("messages.upsert", msg.payloads[0]["data"])  # a re-delivery
        assert statuses(msg, again) == [202, 202]
        (forward,) = r.forwarded(1)
        (stored,) = r.live.box.db.read("SELECT body FROM deliveries")
    token = gateway.instance_token.encode()
    assert token in msg.deliveries[0].body  # the gateway did send it
    assert token not in stored["body"] and token not in forward.body
    sent, kept = json.loads(msg.deliveries[0].body), json.loads(stored["body"])
    assert kept == {**sent, "apikey": "[redacted]"}
    assert json.loads(forward.body) == kept


# --- the gateways' duplicates are one delivery -----------------------------------------------


def test_waha_message_reported_as_c_us_and_as_lid_is_one_delivery(settings: Settings) -> None:
    """WAHA #1627: message and message.any, each as @c.us and as @lid (four webhooks, two
    serialized ids, one key id): one delivery, forwarded once, the phone JID's chat."""
    with rig(settings, "waha") as r, waha(r) as gateway:
        msg = gateway.inbound(CHAT, "hi", lid="1555", duplicate_as_lid=True)
        assert {p["payload"]["id"].split("_")[1] for p in msg.payloads} == {
            "628111@c.us",
            "1555@lid",
        }
        assert statuses(msg) == [202] * 4
        (forward,) = r.forwarded(1)
        assert r.rows() == [
            {"provider_delivery_id": f"default:{msg.key_id}", "conversation": "628111@c.us"}
        ]
    assert forward.headers["ingress-box-delivery-id"] == f"default:{msg.key_id}"


def test_waha_lid_chat_alone_is_kept_as_the_lid(settings: Settings) -> None:
    """With only the @lid report there is no phone JID: the @lid is the conversation."""
    with rig(settings, "waha") as r, waha(r) as gateway:
        msg = gateway.inbound("1555@lid", "hi")
        assert statuses(msg) == [202, 202]
        (forward,) = r.forwarded(1)
    assert forward.headers["ingress-box-conversation"] == "1555@lid"


def test_evolution_redelivered_key_id_is_one_delivery(settings: Settings) -> None:
    """Evolution #2675: the same key.id posted again and again is stored and forwarded once."""
    with rig(settings, "evolution") as r, evolution(r) as gateway:
        msg = gateway.inbound(CHAT, "hi", redeliver=5)
        assert statuses(msg) == [202] * 5
        r.forwarded(1)
        assert [row["provider_delivery_id"] for row in r.rows()] == [f"shop:{msg.key_id}"]


def test_gowa_retries_of_one_message_are_one_delivery(settings: Settings) -> None:
    """GOWA re-posting a message (a retry after a lost answer) is one delivery, forwarded once."""
    with rig(settings, "gowa") as r, gowa(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        retry = gateway.post(msg.payloads[0], copies=3)
        assert statuses(msg, retry) == [202] * 4
        r.forwarded(1)
        assert len(r.rows()) == 1


def test_openwa_duplicate_message_received_is_one_delivery(settings: Settings) -> None:
    """OpenWA #464: message.received dispatched twice (new delivery ids, one idempotency key)
    is stored and forwarded once."""
    with rig(settings, "openwa") as r, openwa(r) as gateway:
        msg = gateway.inbound(CHAT, "hi", duplicates=2)
        ids = {d.headers["X-OpenWA-Delivery-Id"] for d in msg.deliveries}
        assert len(ids) == 2
        assert statuses(msg) == [202, 202]
        r.forwarded(1)
        assert len(r.rows()) == 1


# --- two sessions never collide --------------------------------------------------------------


def test_waha_two_sessions_with_one_key_id_are_two_deliveries(settings: Settings) -> None:
    """The same key id from two WAHA sessions is two messages."""
    with rig(settings, "waha") as r, waha(r) as one, waha(r, session="second") as two:
        key = "3EB0AAAAAAAAAAAAAAAAAA"
        assert statuses(one.inbound(CHAT, "a", key_id=key), two.inbound(CHAT, "b", key_id=key))
        r.forwarded(2)
        assert sorted(row["provider_delivery_id"] for row in r.rows()) == [
            f"default:{key}",
            f"second:{key}",
        ]


def test_evolution_two_instances_with_one_key_id_are_two_deliveries(settings: Settings) -> None:
    """The same key id from two Evolution instances is two messages."""
    with rig(settings, "evolution") as r, evolution(r) as one, evolution(r, instance="b") as two:
        key = "3EB0BBBBBBBBBBBBBBBBBB"
        statuses(one.inbound(CHAT, "a", key_id=key), two.inbound(CHAT, "b", key_id=key))
        r.forwarded(2)
        assert sorted(row["provider_delivery_id"] for row in r.rows()) == [
            f"b:{key}",
            f"shop:{key}",
        ]


def test_gowa_two_devices_with_one_message_id_are_two_deliveries(settings: Settings) -> None:
    """The same message id from two GOWA devices is two messages."""
    other = "6280000000002@s.whatsapp.net"
    with rig(settings, "gowa") as r, gowa(r) as one, gowa(r, device_id=other) as two:
        key = "3EB0CCCCCCCCCCCCCCCCCC"
        statuses(one.inbound(CHAT, "a", key_id=key), two.inbound(CHAT, "b", key_id=key))
        r.forwarded(2)
        assert sorted(row["provider_delivery_id"] for row in r.rows()) == sorted(
            [f"{one.device_id}:{key}", f"{other}:{key}"]
        )


def test_openwa_two_sessions_with_one_key_id_are_two_deliveries(settings: Settings) -> None:
    """The same key id from two OpenWA sessions is two messages (the key names the session)."""
    with rig(settings, "openwa") as r, openwa(r) as one, openwa(r, session="b") as two:
        key = "3EB0DDDDDDDDDDDDDDDDDD"
        statuses(one.inbound(CHAT, "a", key_id=key), two.inbound(CHAT, "b", key_id=key))
        r.forwarded(2)
        assert len({row["provider_delivery_id"] for row in r.rows()}) == 2


# --- other events fall back ------------------------------------------------------------------


def test_waha_ack_and_session_status_use_the_request_id(settings: Settings) -> None:
    """An ack of a message (its id holds the message's key id) and a session status are their
    own deliveries, keyed on X-Webhook-Request-Id."""
    with rig(settings, "waha") as r, waha(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        ack = {"id": f"false_628111@c.us_{msg.key_id}", "from": "628111@c.us", "ack": 3}
        (ack_hook,) = gateway.event("message.ack", ack)
        (status_hook,) = gateway.event("session.status", {"status": "WORKING"})
        assert statuses(msg, ack_hook, status_hook) == [202] * 4
        r.forwarded(3)
        assert [row["provider_delivery_id"] for row in r.rows()] == [
            f"default:{msg.key_id}",
            ack_hook.headers["X-Webhook-Request-Id"],
            status_hook.headers["X-Webhook-Request-Id"],
        ]
        assert r.rows()[1]["conversation"] == "628111@c.us"


def test_waha_event_without_a_request_id_uses_the_body_hash(settings: Settings) -> None:
    """With neither a message key nor X-Webhook-Request-Id the body hash is the id."""
    body = json.dumps({"event": "presence.update", "session": "default", "payload": {}}).encode()
    with rig(settings, "waha") as r:
        headers = {"content-type": "application/json", **SIGNERS["waha"](SECRET, body)}
        assert httpx.post(r.url, content=body, headers=headers).status_code == 202
        r.forwarded(1)
        assert r.rows()[0]["provider_delivery_id"] == body_hash("waha", "main", "events", body)


@pytest.mark.parametrize(
    ("plugin", "event", "data"),
    [
        ("evolution", "messages.update", {"keyId": "3EB0X", "status": "READ"}),
        ("evolution", "presence.update", {"id": "628111@s.whatsapp.net"}),
        ("gowa", "message.ack", {"ids": ["3EB0X"], "receipt_type": "read"}),
        ("gowa", "chat_presence", {"chat_id": "628111@s.whatsapp.net", "state": "composing"}),
    ],
)
def test_a_non_message_event_is_keyed_on_the_body_hash(
    settings: Settings, plugin: str, event: str, data: dict[str, Any]
) -> None:
    """Evolution and GOWA send no delivery id: an event that is not a message is its body."""
    with rig(settings, plugin) as r, MAKERS[plugin](r) as gateway:
        hook = gateway.event(event, data)
        assert statuses(hook) == [202]
        r.forwarded(1)
        assert r.rows()[0]["provider_delivery_id"] == body_hash(plugin, "main", "events", hook.body)


def test_gowa_event_with_the_id_of_a_message_is_not_that_message(settings: Settings) -> None:
    """A revoke naming a message's id is its own delivery, not a duplicate of the message."""
    with rig(settings, "gowa") as r, gowa(r) as gateway:
        msg = gateway.inbound(CHAT, "hi")
        hook = gateway.event("message.revoked", {"id": msg.key_id, "chat_id": "628111@c.us"})
        assert statuses(msg, hook) == [202, 202]
        r.forwarded(2)
        assert len(r.rows()) == 2


def test_openwa_session_event_is_keyed_on_its_idempotency_key(settings: Settings) -> None:
    """OpenWA keys other events too; the box stores them under that key."""
    with rig(settings, "openwa") as r, openwa(r) as gateway:
        (hook,) = gateway.event("session.status", {"status": "CONNECTED"})
        assert statuses(hook) == [202]
        r.forwarded(1)
        assert r.rows()[0]["provider_delivery_id"] == hook.headers["X-OpenWA-Idempotency-Key"]


# --- the signers -----------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["waha", "evolution", "gowa", "openwa"])
def test_the_signer_signs_as_the_gateway_double_does(plugin: str) -> None:
    """signers.py's gateway signers make the same headers as the doubles' own signing."""
    body = b'{"event":"message"}'
    headers = {k.lower(): v for k, v in SIGNERS[plugin](SECRET, body).items()}
    sha512 = hmac.new(SECRET.encode(), body, hashlib.sha512).hexdigest()
    sha256 = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    expected = {
        "waha": {"x-webhook-hmac": sha512, "x-webhook-hmac-algorithm": "sha512"},
        "evolution": {"x-ingress-token": SECRET},
        "gowa": {"x-hub-signature-256": sha256},
        "openwa": {"x-openwa-signature": sha256},
    }[plugin]
    assert {k: headers[k] for k in expected} == expected


# --- the manifest language they use ----------------------------------------------------------


def route_manifest(dedup: Any = None, conversation: Any = None) -> dict[str, Any]:
    route: dict[str, Any] = {"verify": {"scheme": "hmac", "header": "X-Sig"}}
    if dedup is not None:
        route["dedup"] = dedup
    if conversation is not None:
        route["conversation"] = conversation
    return {"id": "acme", "name": "Acme", "routes": {"hooks": route}}


PART = {"pointer": "/id", "split": "_", "part": 1}


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        (route_manifest({"json_pointer": {"pointer": "/id", "split": "_"}}), "part"),
        (route_manifest({"json_pointer": {"pointer": "/id", "part": 1}}), "split"),
        (route_manifest({"json_pointer": {**PART, "split": ""}}), "split"),
        (route_manifest({"json_pointer": {**PART, "part": "1"}}), "part"),
        (route_manifest({"json_pointer": {**PART, "part": 600}}), "part"),
        (route_manifest({"json_pointer": {**PART, "pointer": "id"}}), "pointer"),
        (route_manifest({"json_pointer": {**PART, "extra": 1}}), "extra"),
        (route_manifest({"json_pointer": 7}), "json_pointer"),
        (route_manifest({"scope_json_pointer": "/s"}), "scope_json_pointer"),
        (route_manifest({"json_pointer": "/id", "scope_json_pointer": "s"}), "scope_json_pointer"),
        (route_manifest({"when": {"json_pointer": "/e", "equals": ["m"]}}), "when"),
        (route_manifest({"json_pointer": "/id", "when": {"json_pointer": "/e"}}), "equals"),
        (route_manifest({"json_pointer": "/id", "when": {"equals": ["m"]}}), "json_pointer"),
        (route_manifest({"json_pointer": "/id", "when": {"json_pointer": "/e", "in": []}}), "in"),
        (route_manifest({"body": True, "fallback_headers": ["X-Id"]}), "body"),
        (route_manifest({"fallback_headers": ["bad header"]}), "fallback_headers"),
        (route_manifest(conversation={"json_pointers": [PART, {"split": "_"}]}), "pointer"),
        (route_manifest(conversation={"json_pointers": "/id"}), "json_pointers"),
        (route_manifest(conversation={"avoid_suffixes": [""]}), "avoid_suffixes"),
        (route_manifest(conversation={"avoid_suffixes": "@lid"}), "avoid_suffixes"),
    ],
)
def test_a_bad_value_rule_fails_naming_its_field(manifest: dict[str, Any], field: str) -> None:
    """The new dedup and conversation keys are checked as strictly as the others."""
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest, "acme.json")
    assert info.value.field.startswith("routes.hooks.")
    assert info.value.field.endswith("." + field)


def route_of(manifest: dict[str, Any]) -> Route:
    return parse_manifest(manifest, "acme.json").routes["hooks"]


def test_a_part_past_the_end_is_no_value_and_the_body_hash_is_used() -> None:
    """A string with fewer parts than asked gives no id, so the fallback applies."""
    route = route_of(route_manifest({"json_pointer": PART, "fallback_headers": ["X-Id"]}))
    body = Body(b'{"id": "only-one-part"}')
    assert provider_delivery_id(route, "acme", "main", {"x-id": "h-1"}, body) == "h-1"
    assert provider_delivery_id(route, "acme", "main", {}, body) == body_hash(
        "acme", "main", "hooks", body.raw
    )
    last = {**PART, "part": -1}
    route = route_of(route_manifest({"json_pointer": last}))
    assert provider_delivery_id(route, "acme", "main", {}, Body(b'{"id": "a_b_c"}')) == "c"


def test_a_scope_that_is_absent_means_no_id_rather_than_an_unscoped_one() -> None:
    """Without its scope the pointer's id could meet another sender's: the body hash is used."""
    route = route_of(route_manifest({"json_pointer": "/id", "scope_json_pointer": "/s"}))
    scoped = Body(b'{"id": "k", "s": "one"}')
    assert provider_delivery_id(route, "acme", "main", {}, scoped) == "one:k"
    bare = Body(b'{"id": "k"}')
    assert provider_delivery_id(route, "acme", "main", {}, bare) == body_hash(
        "acme", "main", "hooks", bare.raw
    )


def test_a_combined_id_over_the_length_limit_is_refused() -> None:
    """The scoped id obeys the 512-character limit like any value."""
    route = route_of(route_manifest({"json_pointer": "/id", "scope_json_pointer": "/s"}))
    body = Body(json.dumps({"id": "k" * 300, "s": "s" * 300}).encode())
    with pytest.raises(BadDeliveryId):
        provider_delivery_id(route, "acme", "main", {}, body)


def test_an_avoided_suffix_is_the_conversation_only_when_nothing_else_is_found() -> None:
    """avoid_suffixes puts a value last, whatever the order it was declared in."""
    conversation = {"json_pointers": ["/a", "/b"], "avoid_suffixes": ["@lid"]}
    route = route_of(route_manifest(conversation=conversation))
    both = Body(b'{"a": "1555@lid", "b": "628111@c.us"}')
    assert conversation_id(route, {}, both) == "628111@c.us"
    assert conversation_id(route, {}, Body(b'{"a": "1555@lid"}')) == "1555@lid"
    assert conversation_id(route, {}, Body(b"{}")) is None


def test_a_route_with_a_condition_takes_a_body_that_is_not_json_by_its_fallbacks() -> None:
    """A pointer that applies only to some events reads no id from a body that is not JSON:
    the fallback header, else the body hash (only an unconditional pointer refuses it)."""
    when = {"json_pointer": "/e", "equals": ["m"]}
    route = route_of(
        route_manifest({"json_pointer": "/id", "when": when, "fallback_headers": ["X-Id"]})
    )
    body = Body(b"not json")
    assert provider_delivery_id(route, "acme", "main", {"x-id": "h-1"}, body) == "h-1"
    assert provider_delivery_id(route, "acme", "main", {}, body) == body_hash(
        "acme", "main", "hooks", body.raw
    )


def redacting(*pointers: str) -> Route:
    manifest = route_manifest()
    manifest["routes"]["hooks"]["redact_json_pointers"] = list(pointers)
    return route_of(manifest)


def test_redacted_pointers_replace_only_the_values_they_name() -> None:
    """Objects and arrays both; the rest of the document is kept as it was."""
    route = redacting("/apikey", "/data/tokens/1", "/data/a~1b")
    raw = b'{"apikey": "k-1", "data": {"tokens": ["t0", "t1"], "a/b": "x", "n": 1.5}, "e": "m"}'
    stored = json.loads(stored_body(route, Body(raw)))
    assert stored == {
        "apikey": "[redacted]",
        "data": {"tokens": ["t0", "[redacted]"], "a/b": "[redacted]", "n": 1.5},
        "e": "m",
    }


@pytest.mark.parametrize(
    "raw",
    [b'{"other": "k"}', b'{"apikey": null}', b"not json", b'["apikey"]', b'{"apikey": "\\ud800"'],
)
def test_a_body_without_the_redacted_values_is_stored_as_received(raw: bytes) -> None:
    """Nothing to replace (absent, null, not JSON): the raw bytes, untouched."""
    assert stored_body(redacting("/apikey"), Body(raw)) == raw


def test_redaction_keeps_text_that_utf8_cannot_hold_as_its_escape() -> None:
    """A lone surrogate escape stays an escape, so the stored body is still UTF-8 JSON."""
    raw = b'{"apikey": "k", "name": "\\ud800 caf\\u00e9"}'
    stored = stored_body(redacting("/apikey"), Body(raw))
    stored.decode("utf-8")
    assert json.loads(stored) == {"apikey": "[redacted]", "name": "\ud800 caf\u00e9"}


@pytest.mark.parametrize("pointers", [["apikey"], [""], "/apikey", [7]])
def test_a_bad_redact_pointer_fails_naming_the_field(pointers: Any) -> None:
    """redact_json_pointers is a list of non-empty JSON pointers."""
    manifest = route_manifest()
    manifest["routes"]["hooks"]["redact_json_pointers"] = pointers
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest, "acme.json")
    assert info.value.field == "routes.hooks.redact_json_pointers"

"""Mappings and events: learned when an event is accepted (Chatwoot, Meta, a custom manifest),
and handed to deliveries (enrichment headers, and the handler context)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import T0, Reply
from fake_target import running_target
from live import add_instance, running_box
from signers import sign_chatwoot, sign_generic, sign_meta
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box.config import Settings
from ingress_box.delivery import Event, HandlerContext
from ingress_box.errors import ManifestError
from ingress_box.handlers import register_handler
from ingress_box.plugins import load_registry
from ingress_box.store import mappings as store
from ingress_box.store.mappings import ConversationMapping, Upsert
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

SECRET = "s3cret-value"


def chatwoot_event(delivery: str, conversation: int, source_id: str) -> bytes:
    return json.dumps(
        {
            "event": "message_created",
            "content": "hi",
            "conversation": {
                "id": conversation,
                "contact_inbox": {"source_id": source_id},
                "meta": {"sender": {"phone_number": "+" + source_id}},
            },
            "delivery": delivery,
        }
    ).encode()


def post_chatwoot(client: TestClient, body: bytes, delivery: str) -> Reply:
    return client.post(
        "/ingress/chatwoot/cw/events",
        content=body,
        headers={
            "content-type": "application/json",
            **sign_chatwoot(SECRET, body, at=int(T0), msg_id=delivery),
        },
    )


def delivery_row(box: Box, provider_id: str) -> dict[str, Any]:
    row = box.db.read_one(
        "SELECT id, note, received_at FROM deliveries WHERE provider_delivery_id = ?",
        (provider_id,),
    )
    assert row is not None
    return dict(row)


def mapping_of(
    box: Box, plugin: str, instance: str, conversation: str
) -> ConversationMapping | None:
    return store.of_conversation(box.db, plugin, instance, conversation)


# -- learning ---------------------------------------------------------------------------------


def test_a_chatwoot_event_learns_its_mapping_with_the_delivery(
    client: TestClient, box: Box
) -> None:
    """An accepted Chatwoot event binds its conversation to the contact's chat on the
    instance's session, written with the delivery (one clock reading, one commit)."""
    add_instance(box, plugin="chatwoot", instance="cw", session="wa-1")
    assert post_chatwoot(client, chatwoot_event("d1", 42, "5511999"), "d1").status_code == 202
    mapping = mapping_of(box, "chatwoot", "cw", "42")
    assert mapping is not None
    assert (mapping.session, mapping.chat, mapping.state) == ("wa-1", "5511999", "bot")
    assert mapping.updated_at == delivery_row(box, "d1")["received_at"]


def test_a_conflicting_event_is_still_acked_and_its_delivery_carries_the_note(
    client: TestClient, box: Box
) -> None:
    """An event whose conversation is bound to another chat is 202, noted, and changes nothing."""
    add_instance(box, plugin="chatwoot", instance="cw", session="wa-1")
    box.db.write(store.upsert(Upsert("chatwoot", "cw", "wa-1", "5500000", "42"), T0))
    assert post_chatwoot(client, chatwoot_event("d1", 42, "5511999"), "d1").status_code == 202
    note = delivery_row(box, "d1")["note"]
    assert note.startswith("mapping_conflict: conversation 42 is bound to chat 5500000")
    assert store.of_chat(box.db, "chatwoot", "cw", "wa-1", "5511999") is None
    assert box.db.read("SELECT count(*) FROM outbox")[0][0] == 1


def test_a_duplicate_event_learns_nothing_again(client: TestClient, box: Box) -> None:
    """Only a new delivery upserts: a provider retry does not recreate a deleted mapping."""
    add_instance(box, plugin="chatwoot", instance="cw", session="wa-1")
    body = chatwoot_event("d1", 42, "5511999")
    post_chatwoot(client, body, "d1")
    learned = mapping_of(box, "chatwoot", "cw", "42")
    assert learned is not None
    box.db.write(store.delete(learned.id))
    assert post_chatwoot(client, body, "d1").status_code == 202
    assert mapping_of(box, "chatwoot", "cw", "42") is None


def test_without_a_session_a_chatwoot_event_learns_nothing(client: TestClient, box: Box) -> None:
    """Chatwoot's route takes the session from the instance; an instance without one learns
    nothing (and still acks)."""
    add_instance(box, plugin="chatwoot", instance="cw")
    assert post_chatwoot(client, chatwoot_event("d1", 42, "5511999"), "d1").status_code == 202
    assert mapping_of(box, "chatwoot", "cw", "42") is None


def test_a_meta_event_takes_its_session_from_the_phone_number_id(
    client: TestClient, box: Box
) -> None:
    """Meta's route learns the wa_id as the chat and, lacking an instance session, the business
    phone number id as the session."""
    add_instance(box, plugin="meta", instance="wa")
    body = json.dumps(
        {
            "entry": [
                {
                    "changes": [
                        {
                            "value": {
                                "metadata": {"phone_number_id": "1098"},
                                "contacts": [{"wa_id": "5511777"}],
                                "messages": [{"from": "5511777", "text": {"body": "oi"}}],
                            }
                        }
                    ]
                }
            ]
        }
    ).encode()
    response = client.post(
        "/ingress/meta/wa/webhook",
        content=body,
        headers={"content-type": "application/json", **sign_meta(SECRET, body)},
    )
    assert response.status_code == 200
    mapping = mapping_of(box, "meta", "wa", "5511777")
    assert mapping is not None and (mapping.session, mapping.chat) == ("1098", "5511777")


MANIFEST = """
id = "bridge"
name = "Bridge"
[routes.events]
conversation = { headers = ["X-Conversation"] }
mapping = MAPPING
[routes.events.verify]
scheme = "hmac"
header = "X-Signature"
prefix = "sha256="
"""
CUSTOM = MANIFEST.replace(
    "MAPPING", '{ chat = { json_pointers = ["/chat/id"] }, session = { headers = ["X-Session"] } }'
)


def test_a_custom_manifest_declares_chat_and_session_sources(tmp_path: Path) -> None:
    """A plugins-folder manifest may say where the chat and the session are."""
    (tmp_path / "bridge.toml").write_text(CUSTOM)
    plugin = load_registry(tmp_path).get("bridge")
    assert plugin is not None
    route = plugin.routes["events"]
    assert route.mapping is not None and route.mapping.chat.json_pointers == ("/chat/id",)
    assert route.mapping.session is not None and route.mapping.session.headers == ("x-session",)


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ("{ session = { headers = ['X-S'] } }", "routes.events.mapping.chat"),
        ("{ chat = {} }", "routes.events.mapping.chat.headers"),
        ("{ chat = { json_pointers = ['no-slash'] } }", "routes.events.mapping.chat.json_pointers"),
        ("{ chat = { headers = ['X'] }, who = 1 }", "routes.events.mapping.who"),
    ],
)
def test_a_bad_mapping_table_fails_naming_the_field(
    tmp_path: Path, mapping: str, field: str
) -> None:
    """A mapping table without a chat source, or with a bad pointer or key, is a ManifestError."""
    (tmp_path / "bridge.toml").write_text(MANIFEST.replace("MAPPING", mapping))
    with pytest.raises(ManifestError) as caught:
        load_registry(tmp_path)
    assert caught.value.field == field


# -- enrichment and the handler context -------------------------------------------------------


def send_generic(url: str, conversation: str, delivery: str) -> httpx.Response:
    body = json.dumps({"delivery": delivery}).encode()
    return httpx.post(
        url + "/ingress/generic/main/events",
        content=body,
        headers={
            "content-type": "application/json",
            **sign_generic(SECRET, body, msg_id=delivery),
            "x-conversation": conversation,
        },
    )


def test_a_mapped_conversation_is_forwarded_with_session_chat_and_handover(
    settings: Settings,
) -> None:
    """The forward handler adds ingress-box-session, -chat and -handover for a mapped
    conversation, and none of them for an unmapped one."""
    with running_target() as target, running_box(settings) as live:
        add_instance(live.box, target_url=target.url)
        live.box.db.write(
            store.upsert(
                Upsert("generic", "main", "wa-1", "5511@c.us", "conv-7", state="human"), time.time()
            )
        )
        send_generic(live.url, "conv-7", "d1")
        send_generic(live.url, "conv-8", "d2")
        got = {r.headers["ingress-box-delivery-id"]: r.headers for r in target.wait_for(2)}
    assert (
        got["d1"]["ingress-box-session"],
        got["d1"]["ingress-box-chat"],
        got["d1"]["ingress-box-handover"],
    ) == ("wa-1", "5511@c.us", "human")
    assert not any(
        name in got["d2"]
        for name in ("ingress-box-session", "ingress-box-chat", "ingress-box-handover")
    )


def _handover_to_human(event: Event, ctx: HandlerContext) -> None:
    """A plugin handler: bind the event's conversation to a chat, then hand it to a human."""
    assert ctx.mappings is not None and ctx.mappings.get() is None
    ctx.mappings.set("wa-1", "chat-" + (event.conversation or ""))
    ctx.mappings.set_state("human", {"by": "handler"})


def test_a_plugin_handler_reads_and_writes_mappings_through_its_context(settings: Settings) -> None:
    """ctx.mappings lets a handler bind its event's conversation and change its state."""
    register_handler("test-handover", _handover_to_human)
    with running_box(settings) as live:
        add_instance(live.box, handler="test-handover")
        send_generic(live.url, "conv-9", "d1")

        def handed_over() -> ConversationMapping | None:
            found = mapping_of(live.box, "generic", "main", "conv-9")
            return found if found is not None and found.state == "human" else None

        found = eventually(handed_over, 10, "the handler to write the mapping")
    assert (found.chat, found.metadata) == ("chat-conv-9", {"by": "handler"})

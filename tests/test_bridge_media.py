"""Media across a bridge, both ways, through the real box: a contact's image, voice note or
document becomes a Chatwoot attachment; an agent's attachment goes out through the gateway's
media API; what cannot be carried becomes a short text."""

from __future__ import annotations

import httpx
import pytest
from bridging import KINDS, Bridged, bridged
from doubles.gateway import Media
from waiting import eventually

from ingress_box.config import Settings

pytestmark = pytest.mark.both_stores

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
OGG = b"OggS" + bytes(200)
PDF = b"%PDF-1.4\n" + b"x" * 500


def message_calls(b: Bridged, conversation: int) -> list[dict[str, str]]:
    """The multipart fields of every message the bridge posted to ``conversation``."""
    path = f"/api/v1/accounts/{b.account}/conversations/{conversation}/messages"
    found = []
    for call in b.chatwoot.calls_to("POST", path):
        parts = call.form()
        if parts:
            found.append({p.name: p.data.decode(errors="replace") for p in parts})
    return found


def attachment_bytes(attachment: dict[str, str]) -> bytes:
    return httpx.get(attachment["data_url"]).content


@pytest.mark.parametrize("kind", KINDS)
def test_a_contacts_image_becomes_an_attachment_with_its_caption(
    settings: Settings, kind: str
) -> None:
    """The image is downloaded from the gateway (with its credentials) and uploaded as
    attachments[]; the caption is the message's content."""
    with bridged(settings, kind) as b:
        b.gateway.inbound(b.contact, "look", media=Media("image", PNG, "image/png", "p.png"))
        (conversation,) = b.wait_conversations(1)
        (message,) = b.wait_messages(conversation["id"], 1)
        assert message["content"] == "look"
        (attachment,) = message["attachments"]
        assert attachment["file_type"] == "image"
        assert attachment_bytes(attachment) == PNG


@pytest.mark.parametrize("kind", KINDS)
def test_a_voice_note_is_posted_as_a_voice_message(settings: Settings, kind: str) -> None:
    """A voice note becomes an audio attachment marked is_voice_message."""
    with bridged(settings, kind) as b:
        b.gateway.inbound(b.contact, media=Media("voice", OGG, "audio/ogg; codecs=opus"))
        (conversation,) = b.wait_conversations(1)
        (message,) = b.wait_messages(conversation["id"], 1)
        (attachment,) = message["attachments"]
        assert attachment["file_type"] == "audio"
        assert attachment_bytes(attachment) == OGG
        (fields,) = message_calls(b, conversation["id"])
        assert fields["is_voice_message"] == "true"


def test_media_larger_than_the_body_cap_becomes_a_placeholder(settings: Settings) -> None:
    """Past the box's body cap the media is not fetched whole: the message says so instead."""
    with bridged(settings, "waha", max_body_bytes=8192) as b:
        b.gateway.inbound(b.contact, "big", media=Media("document", PDF * 20, "application/pdf"))
        (conversation,) = b.wait_conversations(1)
        (message,) = b.wait_messages(conversation["id"], 1)
        assert message["attachments"] == []
        assert message["content"] == "big\n[document: too large or no longer available]"


def test_a_poll_becomes_a_short_text(settings: Settings) -> None:
    """A kind that cannot be carried (a poll) is a placeholder text, delivered, never failed."""
    with bridged(settings, "evolution") as b:
        b.gateway.event(
            "messages.upsert",
            {
                "key": {"remoteJid": b.jid(), "fromMe": False, "id": "3EB0POLL00000000000001"},
                "pushName": "Ana",
                "message": {"pollCreationMessage": {"name": "Lunch?", "options": []}},
                "messageTimestamp": 1_700_000_000,
            },
        )
        (conversation,) = b.wait_conversations(1)
        (message,) = b.wait_messages(conversation["id"], 1)
        assert message["content"] == "[poll]"
        eventually(lambda: b.states("evolution") == ["delivered"], 15, "the poll delivered")


@pytest.mark.parametrize("kind", KINDS)
def test_an_agents_attachment_goes_out_through_the_media_api(settings: Settings, kind: str) -> None:
    """The attachment is fetched from its data_url and sent as the gateway's media, the text as
    its caption; the report of it is not mirrored back."""
    with bridged(settings, kind) as b:
        b.gateway.inbound(b.contact, "send me the menu")
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        b.chatwoot.agent_reply(
            b.account,
            conversation["id"],
            "our menu",
            attachments=[("menu.pdf", "application/pdf", PDF)],
        )
        (sent,) = b.wait_sent(1)
        assert (sent.kind, sent.text, sent.media_bytes) == ("document", "our menu", PDF)
        b.wait_settled()
        assert len(b.messages(conversation["id"])) == 2
        assert len(b.gateway.sent) == 1

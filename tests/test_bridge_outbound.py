"""Chatwoot -> WhatsApp through the real box: FakeChatwoot's signed account webhooks reach the
box, whose worker sends agents' messages through the gateway double; handover follows."""

from __future__ import annotations

from typing import Any

import pytest
from bridging import KINDS, Bridged, bridged
from waiting import eventually

from ingress_box.config import Settings

pytestmark = pytest.mark.both_stores


def conversation_of_a_contact(b: Bridged) -> int:
    """The conversation the contact's first message made (that message bridged)."""
    b.gateway.inbound(b.contact, "hello shop")
    (conversation,) = b.wait_conversations(1)
    b.wait_messages(conversation["id"], 1)
    return int(conversation["id"])


def mapping_state(b: Bridged) -> str:
    (mapping,) = b.mappings()
    return mapping.state


@pytest.mark.parametrize("kind", KINDS)
def test_an_agents_reply_is_sent_once_and_its_echo_is_not_posted_back(
    settings: Settings, kind: str
) -> None:
    """The agent's outgoing message goes to the mapped chat once; the gateway's fromMe report
    of it never comes back into Chatwoot."""
    with bridged(settings, kind) as b:
        conversation = conversation_of_a_contact(b)
        b.chatwoot.agent_reply(b.account, conversation, "hi, how can we help?")
        (sent,) = b.wait_sent(1)
        assert (sent.chat, sent.kind, sent.text) == (b.jid(), "text", "hi, how can we help?")
        b.wait_settled()
        contents = [m["content"] for m in b.messages(conversation)]
        assert contents == ["hello shop", "hi, how can we help?"]
        assert len(b.gateway.sent) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_of_replies_is_sent_in_order(settings: Settings, kind: str) -> None:
    """Replies typed one after the other reach WhatsApp in that order."""
    with bridged(settings, kind) as b:
        conversation = conversation_of_a_contact(b)
        texts = [f"reply {n}" for n in range(5)]
        for text in texts:
            b.chatwoot.agent_reply(b.account, conversation, text)
        sent = b.wait_sent(5)
        assert [s.text for s in sent] == texts
        b.wait_settled()
        assert len(b.messages(conversation)) == 6  # no echo came back


def test_private_notes_and_incoming_messages_are_never_sent(settings: Settings) -> None:
    """A private note is not sent, nor the incoming message the bridge posted."""
    with bridged(settings, "waha") as b:
        conversation = conversation_of_a_contact(b)
        b.chatwoot.agent_reply(b.account, conversation, "internal: VIP", private=True)
        b.chatwoot.agent_reply(b.account, conversation, "public")
        (sent,) = b.wait_sent(1)
        b.wait_settled()
        assert sent.text == "public"
        assert b.gateway.sent == [sent]
        notes = b.notes("chatwoot")
        assert any("private note" in n for n in notes)
        assert any("type 'incoming'" in n for n in notes)


def test_a_message_chatwoot_emits_twice_is_sent_once(settings: Settings) -> None:
    """Chatwoot's duplicate message_created (two delivery ids) sends one WhatsApp message."""
    with bridged(settings, "evolution") as b:
        conversation = conversation_of_a_contact(b)
        b.chatwoot.duplicate_emission = True
        b.chatwoot.agent_reply(b.account, conversation, "only once")
        b.wait_sent(1)
        b.wait_settled()
        assert [s.text for s in b.gateway.sent] == ["only once"]
        assert b.states("chatwoot").count("delivered") >= 2


@pytest.mark.parametrize("kind", KINDS)
def test_an_echo_that_overtakes_the_send_answer_is_still_dropped(
    settings: Settings, kind: str
) -> None:
    """The gateway reports the send before answering it: the report waits for the send's id,
    then is dropped, never mirrored as a phone-typed message."""
    with bridged(settings, kind) as b:
        conversation = conversation_of_a_contact(b)
        b.gateway.echo_before_answer = True
        b.chatwoot.agent_reply(b.account, conversation, "racing my echo")
        b.wait_sent(1)
        b.wait_settled()
        assert [m["content"] for m in b.messages(conversation)] == [
            "hello shop",
            "racing my echo",
        ]


def test_an_unconfirmed_openwa_send_is_not_sent_again_and_its_echo_is_dropped(
    settings: Settings,
) -> None:
    """OpenWA answers messageId null, unconfirmed: the message is not retried, and its
    message.sent (an id the bridge never saw) is recognised as the bridge's."""
    with bridged(settings, "openwa") as b:
        conversation = conversation_of_a_contact(b)
        b.gateway.unconfirm_next()
        b.chatwoot.agent_reply(b.account, conversation, "unconfirmed")
        b.wait_sent(1)
        b.wait_settled()
        assert len(b.gateway.sent) == 1
        assert len(b.messages(conversation)) == 2
        assert any("a send the bridge had no id for" in n for n in b.notes("openwa"))


def test_a_gateway_down_then_back_sends_once_after_a_redrive(settings: Settings) -> None:
    """The gateway refuses connections until the reply is dead-lettered; once it is back, a
    redrive through the admin API sends the reply, once."""
    with bridged(settings, "waha", retry_max_attempts=2) as b:
        conversation = conversation_of_a_contact(b)
        b.gateway.refuse()
        b.chatwoot.agent_reply(b.account, conversation, "are you there?")
        eventually(lambda: "dead" in b.states("chatwoot"), 15, "the reply to be dead-lettered")
        assert b.gateway.sent == []
        b.gateway.accept()
        assert b.redrive() == 1
        (sent,) = b.wait_sent(1)
        b.wait_settled()
        assert sent.text == "are you there?"
        assert len(b.gateway.sent) == 1
        assert len(b.messages(conversation)) == 2


SEND_PATHS = {
    "waha": "/api/sendText",
    "evolution": "/message/sendText/",
    "gowa": "/send/message",
    "openwa": "/api/sessions/default/messages/send-text",
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_send_whose_answer_is_lost_is_not_sent_again(settings: Settings, kind: str) -> None:
    """The gateway sends the reply and drops the connection before answering: the retry waits
    for the gateway's report of it, which names the send, and sends nothing more."""
    with bridged(settings, kind) as b:
        conversation = conversation_of_a_contact(b)
        b.gateway.drop_next("POST", SEND_PATHS[kind], after=True)
        b.chatwoot.agent_reply(b.account, conversation, "lost answer")
        b.wait_sent(1)
        eventually(lambda: b.states("chatwoot")[-1] == "delivered", 30, "the reply to settle")
        b.wait_settled()
        assert [s.text for s in b.gateway.sent] == ["lost answer"]
        assert len(b.messages(conversation)) == 2  # nor was its report mirrored


def test_a_send_refused_for_good_leaves_a_private_note_and_dead_letters(
    settings: Settings,
) -> None:
    """A 4xx from the gateway is permanent: a private note says so, the delivery is dead."""
    with bridged(settings, "gowa") as b:
        conversation = conversation_of_a_contact(b)
        b.gateway.fail_next("POST", "/send/message", status=400)
        b.chatwoot.agent_reply(b.account, conversation, "this one fails")
        eventually(lambda: "dead" in b.states("chatwoot"), 15, "the reply to be dead-lettered")
        notes = [m for m in b.messages(conversation) if m["private"]]
        assert len(notes) == 1
        assert "Not delivered to WhatsApp" in notes[0]["content"]
        assert "HTTP 400" in notes[0]["content"]
        b.wait_settled()
        assert b.gateway.sent == []  # the note itself was not sent either


def test_a_conversation_an_agent_starts_is_sent_to_its_contacts_identifier(
    settings: Settings,
) -> None:
    """No mapping yet: the chat is the contact's identifier; the mapping is made then, so the
    contact's answer lands in the same conversation."""
    with bridged(settings, "waha") as b:
        contact = _contact(b, b.jid("628333"))
        conversation = _conversation(b, contact)
        b.chatwoot.agent_reply(b.account, conversation, "we have news")
        (sent,) = b.wait_sent(1)
        assert sent.chat == "628333@c.us"
        b.gateway.inbound("628333", "tell me")
        eventually(lambda: len(b.messages(conversation)) == 2, 15, "the answer in the same one")
        assert len(b.conversations()) == 1


def _contact(b: Bridged, identifier: str) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        f"{b.chatwoot.url}/api/v1/accounts/{b.account}/contacts",
        json={"name": "Citra", "identifier": identifier, "inbox_id": b.inbox},
        headers={"api_access_token": b.chatwoot.token},
    )
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()["payload"]
    return payload


def _conversation(b: Bridged, contact: dict[str, Any]) -> int:
    import httpx

    response = httpx.post(
        f"{b.chatwoot.url}/api/v1/accounts/{b.account}/conversations",
        json={
            "source_id": contact["contact_inbox"]["source_id"],
            "inbox_id": b.inbox,
            "contact_id": contact["contact"]["id"],
        },
        headers={"api_access_token": b.chatwoot.token},
    )
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def test_handover_follows_the_assignee_and_the_status(settings: Settings) -> None:
    """Assigned: human; unassigned: bot; resolved: closed; reopened without an assignee: bot."""
    with bridged(settings, "waha") as b:
        conversation = conversation_of_a_contact(b)
        agent = b.chatwoot.add_agent(b.account, "Dewi")
        b.chatwoot.assign(b.account, conversation, agent)
        eventually(lambda: mapping_state(b) == "human", 15, "human")
        b.chatwoot.assign(b.account, conversation, None)
        eventually(lambda: mapping_state(b) == "bot", 15, "bot")
        b.chatwoot.set_status(b.account, conversation, "resolved")
        eventually(lambda: mapping_state(b) == "closed", 15, "closed")
        b.chatwoot.set_status(b.account, conversation, "open")
        eventually(lambda: mapping_state(b) == "bot", 15, "bot again")

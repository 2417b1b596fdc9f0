"""WhatsApp -> Chatwoot through the real box: each gateway double posts its webhooks to the box,
whose worker runs the bridge handler against FakeChatwoot."""

from __future__ import annotations

import threading

import httpx
import pytest
from bridging import KINDS, Bridged, bridged
from waiting import eventually

from ingress_box.config import Settings

pytestmark = pytest.mark.both_stores


@pytest.mark.parametrize("kind", KINDS)
def test_a_contacts_message_becomes_one_incoming_message_in_its_conversation(
    settings: Settings, kind: str
) -> None:
    """A contact's text is one incoming message, source_id WAID:<key id>, in a conversation of
    the bridge's inbox made for it, with its contact and mapping."""
    with bridged(settings, kind) as b:
        msg = b.gateway.inbound(b.contact, "hello shop", push_name="Ana")
        (conversation,) = b.wait_conversations(1)
        (message,) = b.wait_messages(conversation["id"], 1)
        b.wait_settled()
        assert (message["content"], message["message_type"], message["private"]) == (
            "hello shop",
            0,
            False,
        )
        assert message["source_id"] == f"WAID:{msg.key_id}"
        (contact,) = b.chatwoot.contacts(b.account)
        assert contact["identifier"] == b.jid()
        assert contact["phone_number"] == "+628111"
        assert contact["name"] == "Ana"
        assert conversation["inbox_id"] == b.inbox
        (mapping,) = b.mappings()
        assert (mapping.session, mapping.chat, mapping.conversation, mapping.state) == (
            b.session,
            b.jid(),
            str(conversation["id"]),
            "bot",
        )
        assert mapping.metadata["contact_id"] == contact["id"]
        # The conversation carries the contact-inbox the contact was made with (no orphan).
        assert [ci["source_id"] for ci in contact["contact_inboxes"]] == [
            mapping.metadata["source_id"]
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_the_first_messages_of_a_new_contact_at_once_make_one_contact_and_one_conversation(
    settings: Settings, kind: str
) -> None:
    """Five messages of a new contact sent together: one contact, one conversation, the five
    messages in the order they were sent."""
    with bridged(settings, kind) as b:
        texts = [f"message {n}" for n in range(5)]
        threads = [threading.Thread(target=b.gateway.inbound, args=(b.contact, t)) for t in texts]
        for thread in threads:  # not joined one by one: they post at once
            thread.start()
        for thread in threads:
            thread.join()
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 5)
        b.wait_settled()
        assert len(b.chatwoot.contacts(b.account)) == 1
        assert len(b.conversations()) == 1
        assert sorted(m["content"] for m in b.messages(conversation["id"])) == texts


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_of_one_chat_arrives_in_the_order_it_was_sent(
    settings: Settings, kind: str
) -> None:
    """Messages of one chat sent one after the other reach Chatwoot in that order."""
    with bridged(settings, kind) as b:
        texts = [f"step {n}" for n in range(6)]
        for text in texts:
            b.gateway.inbound(b.contact, text)
        (conversation,) = b.wait_conversations(1)
        posted = b.wait_messages(conversation["id"], 6)
        assert [m["content"] for m in posted] == texts


@pytest.mark.parametrize("kind", KINDS)
def test_a_message_typed_on_the_phone_becomes_an_outgoing_message(
    settings: Settings, kind: str
) -> None:
    """A fromMe message the bridge did not send (the owner typed it) is mirrored as outgoing."""
    with bridged(settings, kind) as b:
        b.gateway.inbound(b.contact, "first, from the contact")
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        mine = b.gateway.inbound(b.contact, "typed on the phone", from_me=True)
        posted = b.wait_messages(conversation["id"], 2)
        assert (posted[1]["content"], posted[1]["message_type"]) == ("typed on the phone", 1)
        assert posted[1]["source_id"] == f"WAID:{mine.key_id}"
        b.wait_settled()
        assert b.gateway.sent == []  # Chatwoot's webhook of that copy was not sent back
        assert len(b.conversations()) == 1


def test_a_message_reported_as_phone_jid_and_as_lid_is_posted_once(settings: Settings) -> None:
    """OpenWA reports one message for the @c.us chat and for its @lid (two deliveries, two
    lanes, at once): one Chatwoot message, one contact, one conversation."""
    with bridged(settings, "openwa") as b:
        key = "3EB0AAAABBBBCCCCDDDDEE"
        b.gateway.inbound(b.contact, "hi once", key_id=key)
        b.gateway.inbound("1555@lid", "hi once", key_id=key, phone=b.contact)
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        b.wait_settled()
        assert len(b.messages(conversation["id"])) == 1
        assert len(b.chatwoot.contacts(b.account)) == 1
        assert len(b.conversations()) == 1


def test_a_lid_report_waits_for_its_chat_without_spending_its_retry_budget(
    settings: Settings,
) -> None:
    """The @lid report of a message waits while the chat's lane is still at the message (its
    contact search stalls): however often it looks, the waits are not failures. With a retry
    budget of two it is not dead-lettered, its attempts are given back, and the instance is
    not failing."""
    with bridged(settings, "openwa", retry_max_attempts=2) as b:
        search = f"/api/v1/accounts/{b.account}/contacts/search"
        b.chatwoot.stall_next("GET", search, seconds=1.5)
        key = "3EB0AAAABBBBCCCCDDDDFF"
        b.gateway.inbound(b.contact, "hi once", key_id=key)
        b.gateway.inbound("1555@lid", "hi once", key_id=key, phone=b.contact)
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        b.wait_settled()
        assert b.states("openwa") == ["delivered", "delivered"]
        db = b.live.box.db
        lid = db.read_one(
            "SELECT seq, attempts FROM deliveries WHERE plugin_id = 'openwa' "
            "ORDER BY seq DESC LIMIT 1"
        )
        assert lid is not None
        waits = db.read(
            "SELECT outcome, error FROM attempts WHERE delivery_seq = ? AND outcome = 'retry'",
            (lid["seq"],),
        )
        assert len(waits) >= 2  # more than its budget: each a wait, none a failure
        assert {w["error"] for w in waits} == {
            "earlier messages of this chat are still on their way"
        }
        assert lid["attempts"] == 1  # the waits were given back; the attempt that posted counts
        health = db.read_one(
            "SELECT consecutive_failures FROM instance_health WHERE plugin_id = 'openwa'"
        )
        assert health is None or health["consecutive_failures"] == 0
        assert len(b.messages(conversation["id"])) == 1


def test_a_waha_message_reported_as_phone_jid_and_as_lid_is_posted_once(
    settings: Settings,
) -> None:
    """WAHA's message and message.any, each as @c.us and as @lid (one key id): one message."""
    with bridged(settings, "waha") as b:
        msg = b.gateway.inbound(b.contact, "hi once", lid="1555", duplicate_as_lid=True)
        assert len(msg.deliveries) == 4
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        b.wait_settled()
        assert len(b.messages(conversation["id"])) == 1


def test_a_lid_chat_resolves_to_the_phone_chat_by_its_alias(settings: Settings) -> None:
    """GOWA names the @lid beside the phone JID once; a later event with only the @lid lands in
    the phone chat's conversation."""
    with bridged(settings, "gowa") as b:
        b.gateway.inbound(b.contact, "with both ids", lid="1555")
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        b.gateway.inbound(b.contact, "only the lid", lid="1555", phone_known=False)
        posted = b.wait_messages(conversation["id"], 2)
        assert [m["content"] for m in posted] == ["with both ids", "only the lid"]
        assert len(b.conversations()) == 1


def test_a_contact_chatwoot_already_has_is_adopted_after_a_422(settings: Settings) -> None:
    """The phone number is taken by a contact made by hand (another identifier): Chatwoot
    answers 422 and the bridge adopts that contact, found by phone."""
    with bridged(settings, "waha") as b:
        existing = b.make_contact("Ana by hand", "+628111")
        b.gateway.inbound(b.contact, "hello again")
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        (contact,) = b.chatwoot.contacts(b.account)
        assert contact["id"] == existing
        path = f"/api/v1/accounts/{b.account}/contacts"
        creates = [c for c in b.chatwoot.calls_to("POST", path) if c.path == path]
        assert len(creates) == 2  # the one by hand, and the bridge's that got the 422
        assert b.mappings()[0].metadata["contact_id"] == existing


def test_an_unknown_event_is_delivered_as_a_no_op_with_its_reason(settings: Settings) -> None:
    """An ack (or any event that is not a message) is delivered, does nothing, and says why."""
    with bridged(settings, "waha") as b:
        b.gateway.event("message.ack", {"id": "true_628111@c.us_3EB0X", "ack": 3})
        eventually(lambda: b.states("waha") == ["delivered"], 15, "the ack to be delivered")
        assert b.notes("waha") == ["skipped: waha event 'message.ack'"]
        assert b.conversations() == []


def test_group_messages_are_one_conversation_with_the_senders_name(settings: Settings) -> None:
    """A group is one conversation; each message is prefixed with who wrote it."""
    with bridged(settings, "evolution") as b:
        b.gateway.inbound("120363@g.us", "hello all", participant="628222", push_name="Budi")
        (conversation,) = b.wait_conversations(1)
        (message,) = b.wait_messages(conversation["id"], 1)
        assert message["content"] == "Budi: hello all"
        assert b.mappings()[0].chat == "120363@g.us"


def test_group_messages_are_skipped_when_the_bridge_says_so(settings: Settings) -> None:
    """With the option groups = skip, a group message is delivered as a no-op."""
    with bridged(settings, "evolution", options={"groups": "skip"}) as b:
        b.gateway.inbound("120363@g.us", "hello all", participant="628222")
        eventually(lambda: b.states("evolution") == ["delivered"], 15, "the skip")
        assert "groups option is skip" in b.notes("evolution")[0]
        assert b.conversations() == []


def test_a_post_that_fails_after_chatwoot_wrote_it_is_not_posted_again(
    settings: Settings,
) -> None:
    """Chatwoot stores the message and answers 500: the retry finds WAID:<key> in the
    conversation and posts nothing more."""
    with bridged(settings, "waha") as b:
        b.gateway.inbound(b.contact, "first")
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        path = f"/api/v1/accounts/{b.account}/conversations/{conversation['id']}/messages"
        b.chatwoot.fail_next("POST", path, status=500, after=True)
        b.gateway.inbound(b.contact, "second")
        b.wait_messages(conversation["id"], 2)
        b.wait_settled()
        assert [m["content"] for m in b.messages(conversation["id"])] == ["first", "second"]
        assert "retry" in _outcomes(b)


def test_a_post_that_times_out_after_chatwoot_wrote_it_is_not_posted_again(
    settings: Settings,
) -> None:
    """Chatwoot stores the message and never answers in time: the attempt times out; the retry
    finds the message and posts nothing more."""
    with bridged(settings, "evolution") as b:
        b.gateway.inbound(b.contact, "first")
        (conversation,) = b.wait_conversations(1)
        b.wait_messages(conversation["id"], 1)
        path = f"/api/v1/accounts/{b.account}/conversations/{conversation['id']}/messages"
        b.chatwoot.stall_next("POST", path, seconds=8, after=True)
        b.gateway.inbound(b.contact, "second")
        b.wait_messages(conversation["id"], 2)
        eventually(lambda: b.states("evolution") == ["delivered"] * 2, 30, "both delivered")
        b.wait_settled()
        assert [m["content"] for m in b.messages(conversation["id"])] == ["first", "second"]
        assert "retry" in _outcomes(b)


def test_a_deleted_conversation_is_made_again_for_the_next_message(settings: Settings) -> None:
    """The mapped conversation was deleted in Chatwoot (404 on post): the mapping is rebuilt in
    the same attempt and the message lands in a new conversation."""
    with bridged(settings, "gowa") as b:
        b.gateway.inbound(b.contact, "first")
        (old,) = b.wait_conversations(1)
        b.wait_messages(old["id"], 1)
        _delete_conversation(b, old["id"])
        b.gateway.inbound(b.contact, "after the delete")
        eventually(lambda: len(b.chatwoot.conversations(b.account)) == 2, 15, "a new one")
        new = b.conversations()[-1]
        (message,) = b.wait_messages(new["id"], 1)
        assert message["content"] == "after the delete"
        assert b.mappings()[0].conversation == str(new["id"])


def _outcomes(b: Bridged) -> list[str]:
    return [r["outcome"] for r in b.live.box.db.read("SELECT outcome FROM attempts ORDER BY id")]


def _delete_conversation(b: Bridged, conversation_id: int) -> None:
    response = httpx.delete(
        f"{b.chatwoot.url}/api/v1/accounts/{b.account}/conversations/{conversation_id}",
        headers={"api_access_token": b.chatwoot.token},
    )
    assert response.status_code == 200, response.text

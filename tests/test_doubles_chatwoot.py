"""FakeChatwoot behaves as the Chatwoot Application API and its webhooks do (see its docstring)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from doubles.chatwoot import FakeChatwoot
from fake_target import FakeTarget, Received, Reply, running_target
from waiting import eventually

TOKEN = "cw-test-token"


@dataclass
class World:
    cw: FakeChatwoot
    api: httpx.Client
    target: FakeTarget
    account: int
    inbox: int
    secret: str

    @property
    def base(self) -> str:
        return f"/api/v1/accounts/{self.account}"

    def post(self, path: str, body: dict[str, Any], account: int | None = None) -> httpx.Response:
        return self.api.post(f"/api/v1/accounts/{account or self.account}{path}", json=body)

    def contact(self, identifier: str, phone: str | None = None, account: int | None = None) -> Any:
        body = {"inbox_id": self.inbox, "name": "Ana", "identifier": identifier}
        if phone:
            body["phone_number"] = phone
        response = self.post("/contacts", body, account)
        assert response.status_code == 200, response.text
        return response.json()["payload"]

    def conversation(self, identifier: str = "628111@s.whatsapp.net") -> int:
        payload = self.contact(identifier)
        body = {
            "inbox_id": self.inbox,
            "contact_id": payload["contact"]["id"],
            "source_id": payload["contact_inbox"]["source_id"],
        }
        conversation_id: int = self.post("/conversations", body).json()["id"]
        return conversation_id

    def message(self, conversation: int, **body: Any) -> httpx.Response:
        return self.post(f"/conversations/{conversation}/messages", body)

    def at(self, path: str, event: str | None = None) -> list[Received]:
        return [
            r
            for r in self.target.received
            if r.path == path and (event is None or json.loads(r.body)["event"] == event)
        ]


@pytest.fixture
def world() -> Iterator[World]:
    with running_target() as target, FakeChatwoot(TOKEN, webhook_timeout=0.5) as cw:
        root = target.url.rsplit("/", 1)[0]
        account = cw.add_account("Acme")
        inbox = cw.add_inbox(account, webhook_url=root + "/inbox")
        hook = cw.add_webhook(account, root + "/account")
        with httpx.Client(
            base_url=cw.url, headers={"api_access_token": TOKEN}, trust_env=False
        ) as api:
            yield World(cw, api, target, account, inbox, hook.secret)


def signature(secret: str, request: Received) -> str:
    signed = request.headers["x-chatwoot-timestamp"].encode() + b"." + request.body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def test_a_wrong_or_missing_token_is_refused_with_401(world: World) -> None:
    """The api_access_token header is checked on every Application API call."""
    wrong = world.api.get(world.base + "/contacts/search?q=x", headers={"api_access_token": "no"})
    bare = httpx.get(world.cw.url + world.base + "/contacts/search?q=x", trust_env=False)
    assert (wrong.status_code, bare.status_code) == (401, 401)


def test_two_accounts_hand_out_colliding_ids(world: World) -> None:
    """Inboxes, contacts, conversations and messages count from 1 in each account."""
    other = world.cw.add_account("Other")
    ids = []
    for account, inbox in ((world.account, world.inbox), (other, world.cw.add_inbox(other))):
        world.account, world.inbox = account, inbox
        conversation = world.conversation("a@s.whatsapp.net")
        message = world.message(conversation, content="hi", message_type="incoming").json()
        ids.append((inbox, world.cw.contacts(account)[0]["id"], conversation, message["id"]))
    assert ids == [(1, 1, 1, 1), (1, 1, 1, 1)]


def test_creating_a_contact_with_an_inbox_makes_a_contact_inbox_with_a_uuid_source_id(
    world: World,
) -> None:
    payload = world.contact("628111@s.whatsapp.net", "+628111")
    source_id = payload["contact_inbox"]["source_id"]
    assert len(source_id) == 36 and source_id.count("-") == 4
    assert payload["contact"]["contact_inboxes"] == [payload["contact_inbox"]]
    assert payload["contact_inbox"]["inbox"]["id"] == world.inbox


def test_a_taken_identifier_or_phone_is_a_422_with_chatwoots_error_body(world: World) -> None:
    world.contact("628111@s.whatsapp.net", "+628111")
    same_id = world.post("/contacts", {"identifier": "628111@s.whatsapp.net"})
    same_phone = world.post("/contacts", {"identifier": "other", "phone_number": "+628111"})
    lid_digits = world.post("/contacts", {"identifier": "x@lid", "phone_number": "12345@lid"})
    assert same_id.status_code == same_phone.status_code == lid_digits.status_code == 422
    assert same_id.json() == {
        "message": "Identifier has already been taken",
        "attributes": ["identifier"],
    }
    assert same_phone.json() == {
        "message": "Phone number has already been taken",
        "attributes": ["phone_number"],
    }
    assert lid_digits.json()["attributes"] == ["phone_number"]


def test_the_same_phone_in_another_account_is_no_conflict(world: World) -> None:
    other = world.cw.add_account("Other")
    world.contact("628111@s.whatsapp.net", "+628111")
    response = world.post("/contacts", {"identifier": "628111", "phone_number": "+628111"}, other)
    assert response.status_code == 200


def test_search_matches_substrings_of_phone_and_identifier(world: World) -> None:
    """As Chatwoot's ILIKE search does; a raw '+' in the query string reads as a space."""
    world.contact("628111@s.whatsapp.net", "+628111")
    world.contact("62811@s.whatsapp.net")

    def found(query: str) -> list[str]:
        response = world.api.get(world.base + "/contacts/search", params={"q": query})
        return sorted(c["identifier"] for c in response.json()["payload"])

    raw_plus = world.api.get(world.base + "/contacts/search?q=+628111").json()["payload"]
    assert found("+628111") == ["628111@s.whatsapp.net"]
    assert found("62811") == ["628111@s.whatsapp.net", "62811@s.whatsapp.net"]
    assert raw_plus == []


def test_filter_with_equal_to_matches_exactly(world: World) -> None:
    world.contact("628111@s.whatsapp.net", "+628111")
    world.contact("62811@s.whatsapp.net")
    condition = {
        "attribute_key": "identifier",
        "filter_operator": "equal_to",
        "values": ["62811@s.whatsapp.net"],
        "attribute_model": "standard",
        "query_operator": None,
    }
    response = world.post("/contacts/filter", {"payload": [condition]}).json()
    assert [c["identifier"] for c in response["payload"]] == ["62811@s.whatsapp.net"]


def test_contact_inboxes_can_be_added_with_or_without_a_source_id(world: World) -> None:
    contact = world.post("/contacts", {"identifier": "x"}).json()["payload"]["contact"]
    path = f"/contacts/{contact['id']}/contact_inboxes"
    given = world.post(path, {"inbox_id": world.inbox, "source_id": "x@s.whatsapp.net"}).json()
    made = world.post(path, {"inbox_id": world.inbox}).json()
    assert given["source_id"] == "x@s.whatsapp.net" and len(made["source_id"]) == 36
    assert len(world.cw.contacts(world.account)[0]["contact_inboxes"]) == 2


def test_a_conversation_without_source_id_makes_an_orphan_contact_inbox(world: World) -> None:
    """Evolution #2578: omitting source_id adds a second ContactInbox."""
    payload = world.contact("628111@s.whatsapp.net")
    contact_id = payload["contact"]["id"]
    with_source = {"inbox_id": world.inbox, "contact_id": contact_id}
    with_source["source_id"] = payload["contact_inbox"]["source_id"]
    world.post("/conversations", with_source)
    assert len(world.cw.contacts(world.account)[0]["contact_inboxes"]) == 1
    world.post("/conversations", {"inbox_id": world.inbox, "contact_id": contact_id})
    assert len(world.cw.contacts(world.account)[0]["contact_inboxes"]) == 2


def test_rest_answers_an_integer_message_type_and_webhooks_a_string(world: World) -> None:
    conversation = world.conversation()
    made = world.message(conversation, content="hi", message_type="incoming", source_id="WAID:K1")
    world.cw.wait_emitted()
    listed = world.api.get(f"{world.base}/conversations/{conversation}/messages").json()
    hook = json.loads(world.at("/account", "message_created")[0].body)
    assert made.json()["message_type"] == 0 and listed["payload"][0]["message_type"] == 0
    assert hook["message_type"] == "incoming" and hook["source_id"] == "WAID:K1"


def test_every_api_message_is_emitted_to_each_account_webhook_and_the_inbox(world: World) -> None:
    """Ours included, private notes included: one delivery per configured URL."""
    root = world.target.url.rsplit("/", 1)[0]
    world.cw.add_webhook(world.account, root + "/second")
    conversation = world.conversation()
    world.message(conversation, content="in", message_type="incoming", source_id="WAID:K1")
    world.message(conversation, content="note", message_type="outgoing", private=True)
    world.cw.wait_emitted()
    for path in ("/account", "/second", "/inbox"):
        bodies = [json.loads(r.body) for r in world.at(path, "message_created")]
        assert [(b["content"], b["private"], b["source_id"]) for b in bodies] == [
            ("in", False, "WAID:K1"),
            ("note", True, None),
        ]


def test_account_webhooks_are_signed_over_timestamp_dot_body(world: World) -> None:
    world.message(world.conversation(), content="hi", message_type="incoming")
    world.cw.wait_emitted()
    signed = world.at("/account", "message_created")[0]
    unsigned = world.at("/inbox", "message_created")[0]
    assert signed.headers["x-chatwoot-signature"] == signature(world.secret, signed)
    assert len(signed.headers["x-chatwoot-delivery"]) == 36
    assert "x-chatwoot-signature" not in unsigned.headers  # an API inbox before v4.13


def test_an_inbox_with_a_secret_signs_its_webhooks_too(world: World) -> None:
    """Chatwoot >= 4.13 (PR #13892) signs API-inbox webhooks with the channel's secret."""
    root = world.target.url.rsplit("/", 1)[0]
    world.inbox = world.cw.add_inbox(world.account, "Signed", root + "/signed", secret="s3")
    world.message(world.conversation(), content="hi", message_type="incoming")
    world.cw.wait_emitted()
    request = world.at("/signed", "message_created")[0]
    assert request.headers["x-chatwoot-signature"] == signature("s3", request)


def test_a_signing_key_that_differs_from_the_shown_secret_fails_verification(world: World) -> None:
    """Chatwoot #13809."""
    world.cw.signing_key_differs = True
    world.message(world.conversation(), content="hi", message_type="incoming")
    world.cw.wait_emitted()
    request = world.at("/account", "message_created")[0]
    assert request.headers["x-chatwoot-signature"] != signature(world.secret, request)


def test_a_deleted_conversation_answers_404_to_a_message_post(world: World) -> None:
    conversation = world.conversation()
    assert world.api.delete(f"{world.base}/conversations/{conversation}").status_code == 200
    assert world.message(conversation, content="late").status_code == 404


def test_status_and_assignee_changes_emit_what_a_handover_reader_needs(world: World) -> None:
    conversation = world.conversation()
    agent = world.cw.add_agent(world.account, "Agent Smith")
    world.post(f"/conversations/{conversation}/assignments", {"assignee_id": agent})
    world.post(f"/conversations/{conversation}/assignments", {"assignee_id": None})
    world.post(f"/conversations/{conversation}/toggle_status", {"status": "resolved"})
    world.cw.wait_emitted()
    updated = [json.loads(r.body) for r in world.at("/account", "conversation_updated")]
    status = json.loads(world.at("/inbox", "conversation_status_changed")[0].body)
    assert [u["changed_attributes"] for u in updated] == [
        [{"assignee_id": {"previous_value": None, "current_value": agent}}],
        [{"assignee_id": {"previous_value": agent, "current_value": None}}],
        [{"status": {"previous_value": "open", "current_value": "resolved"}}],
    ]
    assert updated[0]["meta"]["assignee"]["name"] == "Agent Smith"
    assert (status["status"], status["id"], status["account_id"]) == ("resolved", conversation, 1)


def test_an_incoming_message_reopens_a_resolved_conversation(world: World) -> None:
    conversation = world.conversation()
    world.cw.set_status(world.account, conversation, "resolved")
    world.message(conversation, content="back again", message_type="incoming")
    assert world.cw.conversations(world.account)[0]["status"] == "open"


def test_an_agent_reply_is_emitted_as_outgoing_from_a_user(world: World) -> None:
    conversation = world.conversation()
    files = [("photo.jpg", "image/jpeg", b"\xff\xd8jpeg")]
    world.cw.agent_reply(world.account, conversation, "hello", attachments=files)
    world.cw.wait_emitted()
    hook = json.loads(world.at("/inbox", "message_created")[0].body)
    assert (hook["message_type"], hook["private"], hook["source_id"]) == ("outgoing", False, None)
    assert hook["sender"]["type"] == "user"
    assert hook["conversation"]["meta"]["sender"]["identifier"] == "628111@s.whatsapp.net"
    media = httpx.get(hook["attachments"][0]["data_url"], trust_env=False)
    assert hook["attachments"][0]["file_type"] == "image" and media.content == b"\xff\xd8jpeg"


def test_a_multipart_message_carries_its_attachments(world: World) -> None:
    conversation = world.conversation()
    response = world.api.post(
        f"{world.base}/conversations/{conversation}/messages",
        data={
            "content": "voice",
            "message_type": "incoming",
            "source_id": "WAID:K2",
            "content_attributes[in_reply_to_external_id]": "WAID:K1",
        },
        files={"attachments[]": ("a.ogg", b"OggS", "audio/ogg")},
    )
    message = response.json()
    assert message["source_id"] == "WAID:K2" and message["attachments"][0]["file_type"] == "audio"
    assert message["content_attributes"] == {"in_reply_to_external_id": "WAID:K1"}


def test_quoting_by_chatwoot_id_hands_back_the_quoted_source_id(world: World) -> None:
    conversation = world.conversation()
    first = world.message(conversation, content="q", message_type="incoming", source_id="WAID:Q")
    quoted = {"in_reply_to": first.json()["id"]}
    reply = world.message(conversation, content="a", content_attributes=quoted).json()
    assert reply["content_attributes"]["in_reply_to_external_id"] == "WAID:Q"


def test_messages_are_listed_twenty_at_a_time(world: World) -> None:
    conversation = world.conversation()
    for n in range(25):
        world.message(conversation, content=str(n), message_type="incoming")
    path = f"{world.base}/conversations/{conversation}/messages"
    latest = world.api.get(path).json()["payload"]
    older = world.api.get(path, params={"before": latest[0]["id"]}).json()["payload"]
    assert [m["content"] for m in latest] == [str(n) for n in range(5, 25)]
    assert [m["content"] for m in older] == [str(n) for n in range(5)]


def test_duplicate_emission_sends_the_same_message_twice_with_two_delivery_ids(
    world: World,
) -> None:
    """Chatwoot #11901: dedup on (account, message.id), not on the delivery header."""
    world.cw.duplicate_emission = True
    world.message(world.conversation(), content="hi", message_type="incoming")
    world.cw.wait_emitted()
    copies = world.at("/account", "message_created")
    assert [json.loads(c.body)["id"] for c in copies] == [1, 1]
    assert len({c.headers["x-chatwoot-delivery"] for c in copies}) == 2


def test_held_emissions_can_be_released_in_reverse_order(world: World) -> None:
    """Chatwoot #12661: webhooks can arrive in another order than the messages were made."""
    conversation = world.conversation()
    world.cw.hold_emissions()
    world.message(conversation, content="first", message_type="incoming")
    world.message(conversation, content="second", message_type="incoming")
    assert world.at("/account", "message_created") == []
    world.cw.release(reverse=True)
    world.cw.wait_emitted()
    bodies = [json.loads(r.body)["content"] for r in world.at("/account", "message_created")]
    assert bodies == ["second", "first"]


def test_emit_before_response_delivers_the_webhook_before_the_post_answers(world: World) -> None:
    """The race behind OpenWA 0.5.6: the echo can arrive before the create call returns."""
    world.cw.emit_before_response = True
    conversation = world.conversation()
    world.message(conversation, content="mine", message_type="outgoing", source_id="WAID:K9")
    assert [json.loads(r.body)["content"] for r in world.at("/inbox", "message_created")] == [
        "mine"
    ]


def test_a_slow_inbox_receiver_marks_the_message_failed_and_nothing_is_redelivered(
    world: World,
) -> None:
    """The webhook times out (0.5 s here, 5 s in Chatwoot): status failed, message_updated
    follows, and the message_created is never sent again (#15920)."""
    world.target.answer_with(lambda r: Reply(delay=2.0) if r.path == "/inbox" else Reply(200))
    conversation = world.conversation()
    made = world.message(conversation, content="reply", message_type="outgoing").json()

    def failed() -> bool:
        return bool(world.cw.messages(world.account, conversation)[0]["status"] == "failed")

    eventually(failed, 5, "the message to be marked failed")
    updated = eventually(lambda: world.at("/account", "message_updated"), 5, "message_updated")
    world.target.answer_with(lambda r: Reply(200))
    world.cw.wait_emitted()
    body = json.loads(updated[0].body)
    assert body["id"] == made["id"] and "external_error" in body["content_attributes"]
    assert len(world.at("/inbox", "message_created")) == 1
    assert {a.number for a in world.cw.deliveries()} == {1}


def test_chosen_endpoints_fail_for_n_calls_then_recover(world: World) -> None:
    conversation = world.conversation()
    path = f"{world.base}/conversations/{conversation}/messages"
    world.cw.fail_next("POST", path, count=2, status=503)
    statuses = [world.message(conversation, content=str(n)).status_code for n in range(3)]
    assert statuses == [503, 503, 200]
    assert [m["content"] for m in world.cw.messages(world.account, conversation)] == ["2"]


def test_a_5xx_after_the_write_leaves_the_message_in_place(world: World) -> None:
    """An unknown outcome: the bridge must look for its source_id before posting again."""
    conversation = world.conversation()
    path = f"{world.base}/conversations/{conversation}/messages"
    world.cw.fail_next("POST", path, status=500, after=True)
    assert world.message(conversation, content="x", source_id="WAID:K3").status_code == 500
    assert [m["source_id"] for m in world.cw.messages(world.account, conversation)] == ["WAID:K3"]


def test_a_stalled_endpoint_makes_the_client_time_out(world: World) -> None:
    conversation = world.conversation()
    world.cw.stall_next("POST", f"{world.base}/conversations", seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        world.api.post(
            f"{world.base}/conversations/{conversation}/messages",
            json={"content": "slow"},
            timeout=0.3,
        )
    calls = world.cw.calls_to("POST", f"{world.base}/conversations/{conversation}/messages")
    assert calls[-1].json == {"content": "slow"}

"""FakeOpenWA behaves as OpenWA does towards a bridge: its send API (201, unconfirmed sends),
its signed webhooks with idempotency and delivery ids, duplicates, retries and faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from doubles.gateway import Media
from doubles.openwa import FakeOpenWA
from fake_target import FakeTarget

KEY = {"X-API-Key": "owa_k1_testkey"}
SEND = "/api/sessions/default/messages"


@pytest.fixture
def owa(target: FakeTarget) -> Iterator[FakeOpenWA]:
    with FakeOpenWA(f"{target.url}/owa", time_scale=0.01) as d:
        yield d


def send_text(owa: FakeOpenWA, chat: str = "628111@c.us", text: str = "hello") -> httpx.Response:
    body = {"chatId": chat, "text": text}
    return httpx.post(f"{owa.url}{SEND}/send-text", json=body, headers=KEY, timeout=5)


def events(target: FakeTarget, count: int) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in target.wait_for(count)]


def test_send_text_answers_201_with_message_id_and_timestamp(owa: FakeOpenWA) -> None:
    """send-text answers 201 {messageId: true_<chat>_<KEY>, timestamp}."""
    answer = send_text(owa)
    assert answer.status_code == 201
    assert answer.json()["messageId"] == f"true_628111@c.us_{owa.sent[0].key_id}"
    assert isinstance(answer.json()["timestamp"], int)


def test_the_key_is_taken_as_header_or_bearer_and_checked(owa: FakeOpenWA) -> None:
    """X-API-Key or Authorization: Bearer; others 401, an unknown session 404."""
    body = {"chatId": "628111@c.us", "text": "x"}
    bearer = {"Authorization": "Bearer owa_k1_testkey"}
    assert httpx.post(f"{owa.url}{SEND}/send-text", json=body, headers=bearer).status_code == 201
    assert httpx.post(f"{owa.url}{SEND}/send-text", json=body).status_code == 401
    other = f"{owa.url}/api/sessions/other/messages/send-text"
    assert httpx.post(other, json=body, headers=KEY).status_code == 404
    long = {"chatId": "628111@c.us", "text": "x" * 4097}
    assert httpx.post(f"{owa.url}{SEND}/send-text", json=long, headers=KEY).status_code == 400
    assert len(owa.sent) == 1


def test_an_unconfirmed_send_has_a_null_id_and_still_goes_out(
    owa: FakeOpenWA, target: FakeTarget
) -> None:
    """unconfirm_next: 201 {messageId: null, unconfirmed: true}; message.sent still comes."""
    owa.unconfirm_next()
    answer = send_text(owa).json()
    assert answer["messageId"] is None and answer["unconfirmed"] is True
    (echo,) = events(target, 1)
    assert echo["event"] == "message.sent" and echo["data"]["id"].endswith(owa.sent[0].key_id)
    assert owa.sent[0].message_id is None


def test_inbound_is_signed_with_idempotency_and_delivery_headers(
    owa: FakeOpenWA, target: FakeTarget
) -> None:
    """X-OpenWA-Signature is sha256=HMAC(secret, body); the key is msg_<session>_<id>."""
    msg = owa.inbound("628111", "hi", push_name="Ann")
    (request,) = target.wait_for(1)
    expected = hmac.new(b"openwa-secret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-openwa-signature"] == f"sha256={expected}"
    event = json.loads(request.body)
    data = event["data"]
    assert data["id"] == f"false_628111@c.us_{msg.key_id}" and data["chatId"] == "628111@c.us"
    assert request.headers["x-openwa-idempotency-key"] == f"msg_default_{data['id']}"
    assert request.headers["x-openwa-delivery-id"] == event["deliveryId"]
    assert request.headers["x-openwa-event"] == "message.received"
    assert request.headers["x-openwa-retry-count"] == "0"
    assert data["contact"]["pushName"] == "Ann" and data["fromMe"] is False


def test_a_duplicate_keeps_the_idempotency_key_and_changes_the_delivery(
    owa: FakeOpenWA, target: FakeTarget
) -> None:
    """OpenWA #464: two deliveries of one message, one idempotency key."""
    owa.inbound("628111", "hi", duplicates=2)
    first, second = target.wait_for(2)
    keys = {r.headers["x-openwa-idempotency-key"] for r in (first, second)}
    deliveries = {r.headers["x-openwa-delivery-id"] for r in (first, second)}
    assert len(keys) == 1 and len(deliveries) == 2


def test_a_group_and_a_lid_sender_are_marked(owa: FakeOpenWA, target: FakeTarget) -> None:
    """Groups carry isGroup and the author; a @lid sender isLidSender and senderPhone."""
    owa.inbound("120363000000001@g.us", "hi", participant="628222")
    owa.inbound("155500011@lid", "hi", phone="628111")
    group, lid = (e["data"] for e in events(target, 2))
    assert group["isGroup"] is True and group["author"] == "628222@c.us"
    assert lid["isLidSender"] is True and lid["senderPhone"] == "628111"


def test_inbound_media_is_inline_base64(owa: FakeOpenWA, target: FakeTarget) -> None:
    """data.media carries the bytes as base64 with the mimetype."""
    owa.inbound("628111", "look", media=Media("image", b"jpeg!", "image/jpeg", "a.jpg"))
    data = events(target, 1)[0]["data"]
    assert data["type"] == "image" and data["media"]["mimetype"] == "image/jpeg"
    assert base64.b64decode(data["media"]["data"]) == b"jpeg!"


def test_media_sends_are_recorded(owa: FakeOpenWA) -> None:
    """send-image/-audio/-video/-document take {chatId, url|base64, mimetype, caption}."""
    body = {"chatId": "628111@c.us", "base64": "T2dnUw==", "mimetype": "audio/ogg", "ptt": True}
    assert httpx.post(f"{owa.url}{SEND}/send-audio", json=body, headers=KEY).status_code == 201
    body = {"chatId": "628111@c.us", "url": "http://example.invalid/a.pdf", "caption": "doc"}
    assert httpx.post(f"{owa.url}{SEND}/send-document", json=body, headers=KEY).status_code == 201
    voice, document = owa.sent
    assert (voice.kind, voice.media_bytes) == ("voice", b"OggS")
    assert (document.kind, document.text) == ("document", "doc")


def test_retries_count_up_and_keep_the_delivery_id(owa: FakeOpenWA, target: FakeTarget) -> None:
    """Three attempts in all; X-OpenWA-Retry-Count 0, 1, 2; the delivery id stays."""
    target.reply(500, then=503)
    msg = owa.inbound("628111", "hi")
    assert msg.wait()
    attempts = msg.deliveries[0].attempts
    assert [a.headers["X-OpenWA-Retry-Count"] for a in attempts] == ["0", "1", "2"]
    assert len({a.headers["X-OpenWA-Delivery-Id"] for a in attempts}) == 1


def test_faults_on_the_send_endpoint(owa: FakeOpenWA, target: FakeTarget) -> None:
    """The echo can beat the answer; a lost answer still sends; refused connects fail."""
    owa.echo_before_answer = True
    send_text(owa)
    assert len(target.received) == 1
    owa.drop_next("POST", f"{SEND}/send-text", after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send_text(owa)
    owa.refuse()
    with pytest.raises(httpx.ConnectError):
        send_text(owa)
    owa.accept()
    assert send_text(owa).status_code == 201 and len(owa.sent) == 3


def test_an_unknown_event_is_posted_in_the_envelope(owa: FakeOpenWA, target: FakeTarget) -> None:
    """Events the bridge does not know arrive like any other, with a hashed key."""
    owa.event("call.received", {"from": "628111@c.us"})
    (request,) = target.wait_for(1)
    assert json.loads(request.body)["event"] == "call.received"
    assert request.headers["x-openwa-idempotency-key"].startswith("evt_call_received_")

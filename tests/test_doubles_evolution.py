"""FakeEvolution behaves as Evolution API does towards a bridge: its send API and messageRaw,
its unsigned webhooks with static headers, re-deliveries, LID events, retries and faults."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from doubles.evolution import FakeEvolution, evolution_delays
from doubles.gateway import Media
from fake_target import FakeTarget

KEY = {"apikey": "evolution-instance-token"}


@pytest.fixture
def evo(target: FakeTarget) -> Iterator[FakeEvolution]:
    headers = {"X-Ingress-Token": "evo-token"}
    with FakeEvolution(f"{target.url}/evo", webhook_headers=headers, time_scale=0.002) as d:
        yield d


def send_text(evo: FakeEvolution, number: str = "628111", text: str = "hello") -> httpx.Response:
    url = f"{evo.url}/message/sendText/shop"
    return httpx.post(url, json={"number": number, "text": text}, headers=KEY, timeout=5)


def events(target: FakeTarget, count: int) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in target.wait_for(count)]


def test_send_text_answers_201_with_message_raw(evo: FakeEvolution) -> None:
    """sendText answers 201 with a messageRaw whose key.id is the recorded WhatsApp id."""
    answer = send_text(evo)
    assert answer.status_code == 201
    raw = answer.json()
    assert raw["key"] == {
        "remoteJid": "628111@s.whatsapp.net",
        "fromMe": True,
        "id": evo.sent[0].key_id,
    }
    assert raw["message"] == {"conversation": "hello"} and raw["messageType"] == "conversation"


def test_the_global_key_works_and_a_wrong_key_or_instance_is_refused(evo: FakeEvolution) -> None:
    """`apikey` takes the global key or the instance token; others are 401, a wrong instance 404."""
    url, body = f"{evo.url}/message/sendText/shop", {"number": "628111", "text": "x"}
    assert httpx.post(url, json=body, headers={"apikey": "evolution-global-key"}).status_code == 201
    assert httpx.post(url, json=body, headers={"apikey": "nope"}).status_code == 401
    other = f"{evo.url}/message/sendText/other"
    assert httpx.post(other, json=body, headers=KEY).status_code == 404
    assert len(evo.sent) == 1


def test_our_send_comes_back_as_send_message(evo: FakeEvolution, target: FakeTarget) -> None:
    """The echo of an API send is `send.message` with the same key, the envelope has the apikey."""
    key_id = send_text(evo).json()["key"]["id"]
    (request,) = target.wait_for(1)
    event = json.loads(request.body)
    assert event["event"] == "send.message" and event["instance"] == "shop"
    assert event["data"]["key"]["id"] == key_id and event["data"]["key"]["fromMe"] is True
    assert event["apikey"] == "evolution-instance-token"
    assert request.headers["x-ingress-token"] == "evo-token"


def test_inbound_is_messages_upsert_and_can_be_redelivered(
    evo: FakeEvolution, target: FakeTarget
) -> None:
    """Evolution #2675: the same key.id, N times."""
    msg = evo.inbound("628111", "hi", push_name="Ann", redeliver=3)
    bodies = events(target, 3)
    assert {b["event"] for b in bodies} == {"messages.upsert"}
    assert {b["data"]["key"]["id"] for b in bodies} == {msg.key_id}
    assert bodies[0]["data"]["pushName"] == "Ann" and bodies[0]["data"]["key"]["fromMe"] is False


def test_a_lid_event_carries_the_alt_jid(evo: FakeEvolution, target: FakeTarget) -> None:
    """LID addressing: remoteJid is the LID, remoteJidAlt the phone JID."""
    evo.inbound("628111", "hi", lid="155500011")
    key = events(target, 1)[0]["data"]["key"]
    assert key["remoteJid"] == "155500011@lid" and key["addressingMode"] == "lid"
    assert key["remoteJidAlt"] == "628111@s.whatsapp.net"


def test_a_group_message_names_the_participant(evo: FakeEvolution, target: FakeTarget) -> None:
    """In a group the sender is key.participant (and participantAlt when LID-addressed)."""
    evo.inbound("120363000000001@g.us", "hi", participant="628222", participant_lid="1555")
    key = events(target, 1)[0]["data"]["key"]
    assert key["remoteJid"] == "120363000000001@g.us" and key["participant"] == "1555@lid"
    assert key["participantAlt"] == "628222@s.whatsapp.net"


def test_a_message_typed_on_the_phone_is_upsert_from_me(
    evo: FakeEvolution, target: FakeTarget
) -> None:
    """Phone-typed messages come as messages.upsert with fromMe true."""
    evo.inbound("628111", "typed", from_me=True)
    event = events(target, 1)[0]
    assert event["event"] == "messages.upsert" and event["data"]["key"]["fromMe"] is True


def test_inbound_media_can_be_fetched_both_ways(evo: FakeEvolution, target: FakeTarget) -> None:
    """The event's mediaUrl serves the bytes; getBase64FromMediaMessage returns them too."""
    msg = evo.inbound(
        "628111", "doc", media=Media("document", b"%PDF-1", "application/pdf", "a.pdf")
    )
    message = events(target, 1)[0]["data"]["message"]
    assert message["documentMessage"]["fileName"] == "a.pdf"
    assert httpx.get(message["mediaUrl"]).content == b"%PDF-1"
    url = f"{evo.url}/chat/getBase64FromMediaMessage/shop"
    got = httpx.post(url, json={"message": {"key": {"id": msg.key_id}}}, headers=KEY)
    assert got.status_code == 201 and base64.b64decode(got.json()["base64"]) == b"%PDF-1"


def test_media_sends_are_recorded(evo: FakeEvolution) -> None:
    """sendMedia and sendWhatsAppAudio take Evolution's field names."""
    body = {
        "number": "628111",
        "mediatype": "image",
        "mimetype": "image/png",
        "caption": "look",
        "media": base64.b64encode(b"png").decode(),
    }
    assert (
        httpx.post(f"{evo.url}/message/sendMedia/shop", json=body, headers=KEY).status_code == 201
    )
    body = {"number": "628111", "audio": "http://example.invalid/v.ogg"}
    url = f"{evo.url}/message/sendWhatsAppAudio/shop"
    assert httpx.post(url, json=body, headers=KEY).status_code == 201
    image, voice = evo.sent
    assert (image.kind, image.text, image.media_bytes) == ("image", "look", b"png")
    assert voice.kind == "voice" and voice.media is not None


def test_retries_back_off_and_stop_on_non_retryable_statuses(
    evo: FakeEvolution, target: FakeTarget
) -> None:
    """5xx is retried; 422 ends the delivery at once."""
    target.reply(500, 422)
    msg = evo.inbound("628111", "hi")
    assert msg.wait()
    assert [a.status for a in msg.deliveries[0].attempts] == [500, 422]
    delays = evolution_delays()
    assert len(delays) == 9 and all(5 <= d <= 300 * 1.2 for d in delays)  # jitter after the cap


def test_a_jwt_key_becomes_a_bearer_token(target: FakeTarget) -> None:
    """headers.jwt_key is replaced by Authorization: Bearer <HS256 JWT>."""
    with FakeEvolution(f"{target.url}/evo", webhook_headers={"jwt_key": "k"}) as evo:
        evo.inbound("628111", "hi")
        (request,) = target.wait_for(1)
    token = request.headers["authorization"].removeprefix("Bearer ")
    head, claims, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "=="))["alg"] == "HS256"
    assert json.loads(base64.urlsafe_b64decode(claims + "=="))["app"] == "evolution"
    assert "jwt_key" not in request.headers


def test_by_events_appends_the_event_name(target: FakeTarget) -> None:
    """byEvents posts each event to <url>/<event-name>."""
    with FakeEvolution(f"{target.url}/evo", by_events=True) as evo:
        evo.inbound("628111", "hi")
        assert target.wait_for(1)[0].path.endswith("/evo/messages-upsert")


def test_the_echo_before_the_answer_and_a_lost_answer(
    evo: FakeEvolution, target: FakeTarget
) -> None:
    """The report can beat the answer; a lost answer still sends."""
    evo.echo_before_answer = True
    send_text(evo)
    assert len(target.received) == 1
    evo.drop_next("POST", "/message/sendText", after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send_text(evo)
    assert len(evo.sent) == 2 and len(target.received) == 2


def test_the_send_endpoint_can_fail_and_refuse(evo: FakeEvolution) -> None:
    """A 500 sends nothing; a refused connection fails to connect."""
    evo.fail_next("POST", "/message/sendText", status=500)
    assert send_text(evo).status_code == 500
    evo.refuse()
    with pytest.raises(httpx.ConnectError):
        send_text(evo)
    evo.accept()
    assert send_text(evo).status_code == 201 and len(evo.sent) == 1


def test_an_unknown_event_is_posted_in_the_envelope(evo: FakeEvolution, target: FakeTarget) -> None:
    """Events the bridge does not know arrive like any other."""
    evo.event("presence.update", {"id": "628111@s.whatsapp.net"})
    assert events(target, 1)[0]["event"] == "presence.update"

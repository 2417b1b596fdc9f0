"""FakeWAHA behaves as WAHA does towards a bridge: its send API, its ids, its signed webhooks,
its echoes and duplicates, and the faults a bridge must survive."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from doubles.gateway import Media
from doubles.waha import FakeWAHA, WahaRetries
from fake_target import FakeTarget
from waiting import eventually

KEY = {"X-Api-Key": "waha-api-key"}


@pytest.fixture
def waha(target: FakeTarget) -> Iterator[FakeWAHA]:
    with FakeWAHA(f"{target.url}/waha", retries=WahaRetries(attempts=3), time_scale=0.01) as d:
        yield d


def send_text(waha: FakeWAHA, chat: str = "628111@c.us", text: str = "hello") -> httpx.Response:
    body = {"session": "default", "chatId": chat, "text": text}
    return httpx.post(f"{waha.url}/api/sendText", json=body, headers=KEY, timeout=5)


def events(target: FakeTarget, count: int) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in target.wait_for(count)]


def test_send_text_answers_201_with_the_serialized_id_and_records_the_send(waha: FakeWAHA) -> None:
    """sendText answers 201 with `true_<chat>_<KEY>` and the ledger holds the same KEY."""
    answer = send_text(waha)
    assert answer.status_code == 201
    assert answer.json()["id"] == f"true_628111@c.us_{waha.sent[0].key_id}"
    assert answer.json()["fromMe"] is True and answer.json()["source"] == "api"
    assert (waha.sent[0].chat, waha.sent[0].kind, waha.sent[0].text) == (
        "628111@c.us",
        "text",
        "hello",
    )


def test_a_request_without_the_api_key_is_401_and_sends_nothing(waha: FakeWAHA) -> None:
    """No or a wrong X-Api-Key is refused and not sent."""
    body = {"session": "default", "chatId": "628111@c.us", "text": "x"}
    assert httpx.post(f"{waha.url}/api/sendText", json=body).status_code == 401
    wrong = httpx.post(f"{waha.url}/api/sendText", json=body, headers={"X-Api-Key": "no"})
    assert wrong.status_code == 401
    assert waha.sent == [] and len(waha.calls) == 2


def test_an_unknown_session_is_404_and_a_missing_field_400(waha: FakeWAHA) -> None:
    """Validation answers as WAHA's controllers do."""
    body = {"session": "other", "chatId": "628111@c.us", "text": "x"}
    assert httpx.post(f"{waha.url}/api/sendText", json=body, headers=KEY).status_code == 404
    body = {"session": "default", "chatId": "628111@c.us"}
    assert httpx.post(f"{waha.url}/api/sendText", json=body, headers=KEY).status_code == 400


def test_our_send_comes_back_as_message_any_from_me_source_api(
    waha: FakeWAHA, target: FakeTarget
) -> None:
    """The echo of an API send is `message.any` (never `message`), fromMe, source api."""
    message_id = send_text(waha).json()["id"]
    (echo,) = events(target, 1)
    assert echo["event"] == "message.any" and echo["session"] == "default"
    assert echo["payload"]["id"] == message_id
    assert echo["payload"]["fromMe"] is True and echo["payload"]["source"] == "api"
    assert echo["id"].startswith("evt_") and echo["me"]["lid"].endswith("@lid")


def test_the_echo_can_arrive_before_the_answer(waha: FakeWAHA, target: FakeTarget) -> None:
    """With echo_before_answer the report is at the receiver when sendText returns."""
    waha.echo_before_answer = True
    send_text(waha)
    assert len(target.received) == 1


def test_echo_sends_off_reports_nothing(waha: FakeWAHA, target: FakeTarget) -> None:
    """The echo can be switched off."""
    waha.echo_sends = False
    send_text(waha)
    assert waha.wait_idle() and target.received == []


def test_inbound_is_message_and_message_any_signed_hmac_sha512(
    waha: FakeWAHA, target: FakeTarget
) -> None:
    """A contact's message arrives twice (both events), signed as WAHA signs, one KEY."""
    msg = waha.inbound("628111", "hi", push_name="Ann")
    received = target.wait_for(2)
    assert msg.wait()
    for request in received:
        expected = hmac.new(b"waha-hmac-key", request.body, hashlib.sha512).hexdigest()
        assert request.headers["x-webhook-hmac"] == expected
        assert request.headers["x-webhook-hmac-algorithm"] == "sha512"
        assert request.headers["x-webhook-request-id"] and request.headers["x-webhook-timestamp"]
    bodies = [json.loads(r.body) for r in received]
    assert sorted(b["event"] for b in bodies) == ["message", "message.any"]
    payload = bodies[0]["payload"]
    assert payload["id"] == f"false_628111@c.us_{msg.key_id}"
    assert payload["from"] == "628111@c.us" and payload["fromMe"] is False
    assert payload["_data"]["pushName"] == "Ann" and payload["source"] == "app"


def test_the_lid_duplicate_has_another_id_and_the_same_key(
    waha: FakeWAHA, target: FakeTarget
) -> None:
    """WAHA #1627: the same message as @c.us and as @lid; only the KEY is common."""
    msg = waha.inbound("628111", "hi", lid="155500011@lid", duplicate_as_lid=True)
    bodies = events(target, 4)
    froms = {b["payload"]["from"] for b in bodies if b["event"] == "message"}
    assert froms == {"628111@c.us", "155500011@lid"}
    assert {b["payload"]["id"].rsplit("_", 1)[1] for b in bodies} == {msg.key_id}


def test_a_message_typed_on_the_phone_is_only_message_any(
    waha: FakeWAHA, target: FakeTarget
) -> None:
    """from_me inbound: `message` is for incoming messages only."""
    waha.inbound("628111", "typed on the phone", from_me=True)
    (event,) = events(target, 1)
    assert waha.wait_idle()
    assert len(target.received) == 1
    assert event["event"] == "message.any" and event["payload"]["fromMe"] is True
    assert event["payload"]["source"] == "app" and event["payload"]["to"] == "628111@c.us"


def test_a_group_message_names_the_participant(waha: FakeWAHA, target: FakeTarget) -> None:
    """In a group the id ends with the participant and `from` is the group."""
    msg = waha.inbound("120363000000001@g.us", "hi all", participant="628222")
    payload = events(target, 1)[0]["payload"]
    assert payload["from"] == "120363000000001@g.us"
    assert payload["participant"] == "628222@c.us"
    assert payload["id"] == f"false_120363000000001@g.us_{msg.key_id}_628222@c.us"


def test_inbound_media_is_downloadable_with_the_key(waha: FakeWAHA, target: FakeTarget) -> None:
    """The media url serves the bytes given (with X-Api-Key)."""
    waha.inbound("628111", "a photo", media=Media("image", b"\xff\xd8jpeg", "image/jpeg"))
    payload = events(target, 1)[0]["payload"]
    assert payload["hasMedia"] is True and payload["media"]["mimetype"] == "image/jpeg"
    got = httpx.get(payload["media"]["url"], headers=KEY)
    assert got.status_code == 200 and got.content == b"\xff\xd8jpeg"
    assert httpx.get(payload["media"]["url"]).status_code == 401


def test_media_sends_are_recorded_with_their_kind(waha: FakeWAHA) -> None:
    """sendImage/sendVoice/sendVideo/sendFile take `file:{mimetype, url|data}`."""
    file = {"mimetype": "audio/ogg; codecs=opus", "data": "T2dnUw=="}
    body = {"session": "default", "chatId": "628111@c.us", "file": file}
    assert httpx.post(f"{waha.url}/api/sendVoice", json=body, headers=KEY).status_code == 201
    file = {"mimetype": "image/jpeg", "url": "http://example.invalid/a.jpg"}
    body |= {"file": file, "caption": "look"}
    assert httpx.post(f"{waha.url}/api/sendImage", json=body, headers=KEY).status_code == 201
    voice, image = waha.sent
    assert (voice.kind, voice.media_bytes) == ("voice", b"OggS")
    assert (image.kind, image.text, image.media) == ("image", "look", file)


def test_a_failing_receiver_is_retried_by_the_configured_policy(
    waha: FakeWAHA, target: FakeTarget
) -> None:
    """Three attempts (2 s apart, scaled): two 503s and then a 200."""
    waha.events = {"message"}
    target.reply(503, 503)
    msg = waha.inbound("628111", "hi")
    assert msg.wait()
    assert [a.status for a in msg.deliveries[0].attempts] == [503, 503, 200]
    assert len({a.body for a in msg.deliveries[0].attempts}) == 1


def test_the_send_endpoint_can_fail_stall_drop_and_refuse(waha: FakeWAHA) -> None:
    """5xx and a dropped connection before the handler send nothing; refused connects fail."""
    waha.fail_next("POST", "/api/sendText", count=2, status=503)
    assert [send_text(waha).status_code for _ in range(3)] == [503, 503, 201]
    waha.drop_next("POST", "/api/sendText")
    with pytest.raises(httpx.RemoteProtocolError):
        send_text(waha)
    waha.stall_next("POST", "/api/sendText", seconds=2)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{waha.url}/api/sendText", json={}, headers=KEY, timeout=0.2)
    waha.refuse()
    with pytest.raises(httpx.ConnectError):
        send_text(waha)
    waha.accept()
    assert send_text(waha).status_code == 201
    assert len(waha.sent) == 2


def test_a_lost_answer_still_sends_and_echoes(waha: FakeWAHA, target: FakeTarget) -> None:
    """drop_next(after=True): the message went out, its echo comes, the answer never does."""
    waha.drop_next("POST", "/api/sendText", after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send_text(waha)
    (sent,) = waha.sent
    echo = eventually(lambda: events(target, 1)[0], 5, "the echo")
    assert echo["payload"]["id"].endswith(sent.key_id)


def test_an_unknown_event_is_posted_in_the_envelope(waha: FakeWAHA, target: FakeTarget) -> None:
    """Events the bridge does not know arrive like any other."""
    waha.event("presence.update", {"id": "628111@c.us", "presences": []})
    (event,) = events(target, 1)
    assert event["event"] == "presence.update" and event["payload"]["id"] == "628111@c.us"

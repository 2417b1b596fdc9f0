"""FakeGOWA behaves as go-whatsapp-web-multidevice does towards a bridge: Basic auth and device
selection, its send answers, its signed `message` webhooks with LID fields, retries, faults."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from doubles.gateway import Media
from doubles.gowa import FakeGOWA
from fake_target import FakeTarget

AUTH = ("admin", "gowa-pass")
DEVICE = {"X-Device-Id": "shop"}


@pytest.fixture
def gowa(target: FakeTarget) -> Iterator[FakeGOWA]:
    with FakeGOWA(f"{target.url}/gowa", time_scale=0.01) as d:
        yield d


def send_text(gowa: FakeGOWA, phone: str = "628111", text: str = "hello") -> httpx.Response:
    body = {"phone": phone, "message": text}
    return httpx.post(f"{gowa.url}/send/message", json=body, auth=AUTH, headers=DEVICE, timeout=5)


def events(target: FakeTarget, count: int) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in target.wait_for(count)]


def test_send_message_answers_success_with_the_message_id(gowa: FakeGOWA) -> None:
    """POST /send/message answers 200 {code: SUCCESS, results: {message_id, status}}."""
    answer = send_text(gowa)
    assert answer.status_code == 200 and answer.json()["code"] == "SUCCESS"
    assert answer.json()["results"]["message_id"] == gowa.sent[0].key_id
    assert gowa.sent[0].chat == "628111@s.whatsapp.net"


def test_basic_auth_and_the_device_are_checked(gowa: FakeGOWA) -> None:
    """No credentials is 401, an unknown device 404 DEVICE_NOT_FOUND; nothing is sent."""
    body = {"phone": "628111", "message": "x"}
    assert httpx.post(f"{gowa.url}/send/message", json=body).status_code == 401
    other = httpx.post(
        f"{gowa.url}/send/message", json=body, auth=AUTH, headers={"X-Device-Id": "nobody"}
    )
    assert other.status_code == 404 and other.json()["code"] == "DEVICE_NOT_FOUND"
    assert gowa.sent == []


def test_inbound_is_a_signed_message_event(gowa: FakeGOWA, target: FakeTarget) -> None:
    """X-Hub-Signature-256 is sha256=HMAC(secret, body), the default secret `secret`."""
    msg = gowa.inbound("628111", "hi", push_name="Ann")
    (request,) = target.wait_for(1)
    expected = hmac.new(b"secret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-hub-signature-256"] == f"sha256={expected}"
    event = json.loads(request.body)
    assert event["event"] == "message" and event["device_id"] == gowa.device_id
    payload = event["payload"]
    assert payload["id"] == msg.key_id and payload["chat_id"] == "628111@s.whatsapp.net"
    assert payload["is_from_me"] is False and payload["from_name"] == "Ann"
    assert payload["timestamp"].endswith("Z")


def test_lid_fields_are_set_for_a_lid_chat(gowa: FakeGOWA, target: FakeTarget) -> None:
    """chat_lid/from_lid carry the LID; chat_id is the phone, or the LID when unresolved."""
    gowa.inbound("628111", "hi", lid="155500011")
    gowa.inbound("628111", "hi", lid="155500011", phone_known=False)
    first, second = (e["payload"] for e in events(target, 2))
    assert first["chat_lid"] == "155500011@lid" and first["from_lid"] == "155500011@lid"
    assert first["chat_id"] == "628111@s.whatsapp.net"
    assert second["chat_id"] == "155500011@lid"


def test_a_group_message_names_the_sender(gowa: FakeGOWA, target: FakeTarget) -> None:
    """In a group chat_id is the group and `from` the participant."""
    gowa.inbound("120363000000001@g.us", "hi", participant="628222", participant_lid="1555")
    payload = events(target, 1)[0]["payload"]
    assert payload["chat_id"] == "120363000000001@g.us"
    assert payload["from"] == "628222@s.whatsapp.net" and payload["from_lid"] == "1555@lid"


def test_our_send_is_reported_as_is_from_me(gowa: FakeGOWA, target: FakeTarget) -> None:
    """The echo (when on) is a `message` with is_from_me and the sent id."""
    key_id = send_text(gowa).json()["results"]["message_id"]
    payload = events(target, 1)[0]["payload"]
    assert payload["id"] == key_id and payload["is_from_me"] is True


def test_inbound_media_is_a_statics_path_served_without_auth(
    gowa: FakeGOWA, target: FakeTarget
) -> None:
    """image is `statics/media/...` (an object with the caption), served under the base URL."""
    gowa.inbound("628111", "look", media=Media("image", b"jpeg!", "image/jpeg"))
    gowa.inbound("628111", media=Media("voice", b"OggS", "audio/ogg"))
    image, voice = (e["payload"] for e in events(target, 2))
    assert image["image"]["caption"] == "look" and image["body"] == "look"
    assert httpx.get(f"{gowa.url}/{image['image']['path']}").content == b"jpeg!"
    assert isinstance(voice["audio"], str) and voice["audio"].startswith("statics/media/")


def test_media_sends_take_multipart_or_urls(gowa: FakeGOWA) -> None:
    """/send/image takes an `image` upload, /send/audio an `audio_url` (ptt: a voice note)."""
    files = {"image": ("a.jpg", b"jpeg!", "image/jpeg")}
    data = {"phone": "628111", "caption": "look"}
    url = f"{gowa.url}/send/image"
    assert httpx.post(url, data=data, files=files, auth=AUTH, headers=DEVICE).status_code == 200
    body = {"phone": "628111", "audio_url": "http://example.invalid/v.ogg", "ptt": True}
    url = f"{gowa.url}/send/audio"
    assert httpx.post(url, json=body, auth=AUTH, headers=DEVICE).status_code == 200
    image, voice = gowa.sent
    assert (image.kind, image.text, image.media_bytes) == ("image", "look", b"jpeg!")
    assert voice.kind == "voice" and voice.media is not None


def test_retries_follow_one_two_four_eight_seconds_scaled(
    gowa: FakeGOWA, target: FakeTarget
) -> None:
    """Five attempts at most, 1/2/4/8 s apart (x0.01 here), then it gives up."""
    target.reply(500, then=500)
    msg = gowa.inbound("628111", "hi")
    assert msg.wait()
    attempts = msg.deliveries[0].attempts
    assert [a.status for a in attempts] == [500] * 5
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[3] > gaps[0]


def test_faults_on_the_send_endpoint(gowa: FakeGOWA, target: FakeTarget) -> None:
    """A stalled answer times out; a lost answer still sends and echoes; off means no echo."""
    gowa.echo_sends = False
    gowa.stall_next("POST", "/send/message", seconds=2)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gowa.url}/send/message", json={}, auth=AUTH, timeout=0.2)
    gowa.drop_next("POST", "/send/message", after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send_text(gowa)
    assert len(gowa.sent) == 1 and gowa.wait_idle() and target.received == []


def test_an_unknown_event_is_posted_in_the_envelope(gowa: FakeGOWA, target: FakeTarget) -> None:
    """Events the bridge does not know arrive like any other."""
    gowa.event("newsletter.mute", {"newsletter_id": "1@newsletter"})
    assert events(target, 1)[0]["event"] == "newsletter.mute"

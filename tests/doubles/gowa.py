"""FakeGOWA: go-whatsapp-web-multidevice (aldinokemal) REST API and its webhooks.

    with FakeGOWA(webhook_url, time_scale=0.01) as gowa:  # retries after 10/20/40/80 ms
        gowa.inbound("628111", "hi", lid="1555@lid")  # chat_lid/from_lid set
        # the bridge answers: POST {gowa.url}/send/message, Basic auth, X-Device-Id
        assert gowa.sent[0].text == "..."

Served (HTTP Basic auth when credentials are set; `X-Device-Id` or `?device_id=` picks the
device, an unknown one is 404 `DEVICE_NOT_FOUND`): `POST /send/message` `{phone, message,
reply_message_id?, ...}`, `/send/image` (`image` file or `image_url`, `caption`), `/send/audio`
(`audio` | `audio_url`, `ptt`), `/send/video` (`video` | `video_url`, `caption`), `/send/file`
(`file` | `file_url`, `caption`), JSON or multipart, answered 200 `{code: "SUCCESS", message,
results: {message_id, status}}`; inbound media under `GET /statics/media/{name}` (served before
the auth middleware, so no credentials), named in the event as `statics/media/<name>`.

Webhooks: `{event, device_id, session_id?, payload}`, `X-Hub-Signature-256: sha256=<hex
HMAC-SHA256(secret, raw body)>` (default secret `secret`). A `message` payload is `{id, chat_id,
chat_lid?, from, from_lid?, sender_display_name, from_name, timestamp (RFC 3339), is_from_me,
body?, replied_to_id?, quoted_body?, image|video|audio|document: path or {path, caption}}`.
Retries: 5 attempts, waits 1, 2, 4, 8 s (times `time_scale`), 10 s timeout, any 2xx succeeds.

Checked in the sources: `src/ui/rest/send.go` (routes, form fields, 200 + SUCCESS),
`src/domains/send/*.go` (field names), `pkg/utils/response.go`, `ui/rest/middleware/device.go`
(`X-Device-Id`, 404/400 codes), `cmd/rest.go` (statics before basic auth),
`infrastructure/whatsapp/webhook.go` (`submitWebhook`: signature, 5 tries, 1 s doubling, 10 s),
`event_message.go` (`buildFromFields`: `chat_lid`/`from_lid`, RFC 3339 time) and
`docs/webhook-payload.md`. Not confirmed, and likely untrue: that an API send comes back as a
`message` event — whatsmeow does not report a device's own sends, so GOWA's bridge relies on its
message-link table; `echo_sends` defaults to True here (the harder case), set it False for the
likely one. What GOWA answers with no `X-Device-Id` and several devices (one device here).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .base import Call, Delivery, FormPart, Reply, route
from .gateway import GatewayDouble, Inbound, Media, Sent, is_group, jid, new_key_id, user

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
_SENDS = {
    "/send/image": ("image", "image"),
    "/send/audio": ("audio", "audio"),
    "/send/video": ("video", "video"),
    "/send/file": ("document", "file"),
}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGOWA(GatewayDouble):
    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        basic_auth: tuple[str, str] | None = ("admin", "gowa-pass"),
        device_id: str = "6280000000001@s.whatsapp.net",
        session_id: str | None = "shop",
        secret: str = "secret",
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.basic_auth, self.device_id, self.session_id = basic_auth, device_id, session_id
        self.secret = secret
        super().__init__(
            webhook_url,
            sign=self._sign,
            retry_delays=RETRY_DELAYS,
            webhook_timeout=10.0,
            time_scale=time_scale,
            clock=clock,
        )

    # -- the API ---------------------------------------------------------------------------

    def authorize(self, call: Call) -> Reply | None:
        if call.path.startswith("/statics/"):
            return None
        if self.basic_auth is not None:
            expected = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            given = call.headers.get("authorization", "").removeprefix("Basic ")
            if not hmac.compare_digest(given, expected):
                return (
                    401,
                    b"Unauthorized",
                    {
                        "Content-Type": "text/plain; charset=utf-8",
                        "WWW-Authenticate": 'Basic realm="Restricted"',
                    },
                )
        device = call.headers.get("x-device-id") or call.arg("device_id") or ""
        if device and device not in (self.device_id, self.session_id):
            return (
                404,
                {
                    "code": "DEVICE_NOT_FOUND",
                    "message": "device not found; create a "
                    "device first from /api/devices or provide a valid X-Device-Id",
                    "results": {"device_id": device},
                },
                {},
            )
        return None

    @route("POST", "/send/message")
    def send_text(self, call: Call) -> Reply:
        fields, _ = self._fields(call)
        if not fields.get("phone") or not fields.get("message"):
            return _bad_request("phone and message are required")
        text = str(fields["message"])
        return self._send(call, str(fields["phone"]), "text", text, None, None, "Message")

    @route("POST", "/send/image")
    @route("POST", "/send/audio")
    @route("POST", "/send/video")
    @route("POST", "/send/file")
    def send_media(self, call: Call) -> Reply:
        kind, field = _SENDS[call.path]
        fields, files = self._fields(call)
        upload = files.get(field)
        link = fields.get(f"{field}_url")
        if not fields.get("phone") or (upload is None and not link):
            return _bad_request(f"phone and {field} or {field}_url are required")
        if kind == "audio" and str(fields.get("ptt", "")).lower() in ("true", "1"):
            kind = "voice"
        media = {
            "url": link,
            "filename": upload.filename if upload else None,
            "content_type": upload.content_type if upload else None,
        }
        caption = fields.get("caption") or None
        noun = {"document": "Document", "video": "Video"}.get(kind, "Message")
        return self._send(
            call, str(fields["phone"]), kind, caption, media, upload.data if upload else None, noun
        )

    @route("GET", "/statics/media/{name}")
    def media_file(self, call: Call) -> Reply:
        return self.media_reply(call.params["name"])

    def _fields(self, call: Call) -> tuple[dict[str, Any], dict[str, FormPart]]:
        if isinstance(call.json, dict):
            return call.json, {}
        parts = call.form()
        fields = {p.name: p.data.decode(errors="replace") for p in parts if p.filename is None}
        return fields, {p.name: p for p in parts if p.filename is not None}

    def _send(
        self,
        call: Call,
        phone: str,
        kind: str,
        text: str | None,
        media: Mapping[str, Any] | None,
        data: bytes | None,
        noun: str,
    ) -> Reply:
        chat, key = jid(phone, "s.whatsapp.net"), new_key_id()
        status = f"{noun} sent to {phone} (server timestamp: {rfc3339(self.clock())})"
        sent = Sent(chat, kind, text, key, key, media, data, call)
        self.record(sent, lambda s: [self._echo(s)])
        return (
            200,
            {
                "code": "SUCCESS",
                "message": status,
                "results": {"message_id": key, "status": status},
            },
            {},
        )

    def _echo(self, sent: Sent) -> Delivery:
        payload: dict[str, Any] = {
            "id": sent.key_id,
            "chat_id": sent.chat,
            "from": self.device_id,
            "sender_display_name": user(self.device_id),
            "timestamp": rfc3339(self.clock()),
            "is_from_me": True,
        }
        if sent.text:
            payload["body"] = sent.text
        return self._emit("message", payload)

    # -- what a test drives ----------------------------------------------------------------

    def inbound(
        self,
        chat: str,
        text: str = "",
        *,
        media: Media | None = None,
        from_me: bool = False,
        push_name: str = "Contact",
        participant: str | None = None,
        lid: str | None = None,
        participant_lid: str | None = None,
        phone_known: bool = True,
        key_id: str | None = None,
        reply_to: tuple[str, str] | None = None,
        timestamp: float | None = None,
    ) -> Inbound:
        """A `message` event for `chat`. With `lid` the chat came LID-addressed: `chat_lid` and
        `from_lid` carry it and `chat_id`/`from` the phone JID, or the LID itself when
        `phone_known` is False (GOWA could not resolve it). `reply_to` is `(id, quoted body)`."""
        chat = jid(chat, "s.whatsapp.net")
        key = key_id or new_key_id()
        payload: dict[str, Any] = {"id": key}
        if lid and not is_group(chat):
            chat_id = chat if phone_known else jid(lid, "lid")
            payload |= {"chat_id": chat_id, "chat_lid": jid(lid, "lid")}
            sender, sender_lid = (self.device_id, None) if from_me else (chat_id, jid(lid, "lid"))
        else:
            payload["chat_id"] = chat
            sender = jid(participant, "s.whatsapp.net") if participant else chat
            sender, sender_lid = (self.device_id, None) if from_me else (sender, None)
            if participant_lid and not from_me:
                sender_lid = jid(participant_lid, "lid")
        payload["from"] = sender
        if sender_lid:
            payload["from_lid"] = sender_lid
        payload |= {
            "sender_display_name": push_name,
            "from_name": push_name,
            "timestamp": rfc3339(timestamp if timestamp is not None else self.clock()),
            "is_from_me": from_me,
        }
        if text:
            payload["body"] = text
        if reply_to:
            payload |= {"replied_to_id": reply_to[0], "quoted_body": reply_to[1]}
        if media is not None:
            path = f"statics/media/{self.store_media(media, f'{int(self.clock())}-{key}')}"
            field = {"voice": "audio"}.get(media.kind, media.kind)
            payload[field] = {"path": path, "caption": text} if text else path
        return Inbound(key, chat, [self._emit("message", payload)])

    def event(self, name: str, payload: Any) -> Delivery:
        """Emit any event (e.g. one the bridge does not know) in GOWA's envelope."""
        return self._emit(name, payload)

    def _emit(self, event: str, payload: Any) -> Delivery:
        envelope: dict[str, Any] = {"event": event, "device_id": self.device_id}
        if self.session_id is not None:
            envelope["session_id"] = self.session_id
        envelope["payload"] = payload
        return self.post(envelope)

    def _sign(self, body: bytes, attempt: int) -> dict[str, str]:
        digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": f"sha256={digest}"}


def _bad_request(message: str) -> Reply:
    return 400, {"code": "BAD_REQUEST", "message": message, "results": None}, {}

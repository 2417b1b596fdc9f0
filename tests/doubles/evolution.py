"""FakeEvolution: the Evolution API (EvolutionAPI/evolution-api) HTTP API and its webhooks.

    with FakeEvolution(webhook_url, webhook_headers={"X-Ingress-Token": "t"}) as evo:
        evo.inbound("628111", "hi", lid="1555@lid", redeliver=3)  # the same key.id, 3 times
        # the bridge answers: POST {evo.url}/message/sendText/shop with apikey: <key>
        assert evo.sent[0].key_id

Served (`apikey` header: the global key or the instance token): `POST /message/sendText/{inst}`
`{number, text, quoted?, delay?, ...}`, `POST /message/sendMedia/{inst}` `{number, mediatype:
image|video|document|audio, mimetype?, caption?, fileName?, media: url|base64}` (or multipart
with `file`), `POST /message/sendWhatsAppAudio/{inst}` `{number, audio}` (a voice note), all
answered 201 with the `messageRaw` of the sent message (`key.id` is the WhatsApp id); inbound
media as `POST /chat/getBase64FromMediaMessage/{inst}` `{message: {key: {id}}}` and, as with S3
storage on, a `message.mediaUrl` in the event (`GET /media/{name}`, no key needed).

Webhooks: `{event, instance, data, destination, date_time, sender, server_url, apikey}` with
`messages.upsert` for received (and phone-typed `fromMe`) messages and `send.message` for API
sends. No signature: only the static `headers` of the webhook config (a `jwt_key` entry becomes
`Authorization: Bearer <HS256 JWT, 10 min>`); `by_events` appends `/<event-name>` to the URL.
Retries: up to 10 attempts, 5 s doubling to at most 300 s with 20 % jitter (never under 5 s), no
retry on 400/401/403/404/422.

Checked in the sources: all of the above in `webhook.controller.ts` (`emit`,
`retryWebhookRequest`, `generateJwtToken`), `sendMessage.router.ts` (201s), `sendMessage.dto.ts`,
`chat.router.ts`/`chat.dto.ts` (getBase64FromMediaMessage), `auth.guard.ts` (`apikey`), and
`whatsapp.baileys.service.ts` (`prepareMessage`; `send.message` is fired, not awaited, before
the send returns, so the echo can beat the answer; `remoteJidAlt`/`addressingMode: 'lid'`).
Not confirmed: the exact 401/404/400 bodies (taken from `src/exceptions`), and the `source`
device names per id (inbound here `android`, ours `web`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .base import Call, Delivery, Reply, route
from .gateway import GatewayDouble, Inbound, Media, Sent, b64decode, is_group, jid, new_key_id

NON_RETRYABLE = frozenset({400, 401, 403, 404, 422})
_MEDIA_MESSAGE = {
    "image": "imageMessage",
    "video": "videoMessage",
    "document": "documentMessage",
    "audio": "audioMessage",
    "voice": "audioMessage",
}


def evolution_delays(
    attempts: int = 10,
    initial: float = 5.0,
    ceiling: float = 300.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> list[float]:
    """The waits between Evolution's webhook attempts (`retryWebhookRequest`)."""
    rng = rng or random.Random(0)
    delays = []
    for failed in range(1, attempts):
        wait = min(initial * 2 ** (failed - 1), ceiling)
        delays.append(max(initial, wait + wait * jitter * (rng.random() * 2 - 1)))
    return delays


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_jwt(key: str, now: float) -> str:
    """The token Evolution puts in `Authorization: Bearer` when the headers carry `jwt_key`."""
    claims = {"iat": int(now), "exp": int(now) + 600, "app": "evolution", "action": "webhook"}
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(signature)}"


class FakeEvolution(GatewayDouble):
    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        instance: str = "shop",
        api_key: str = "evolution-global-key",
        instance_token: str = "evolution-instance-token",
        webhook_headers: Mapping[str, str] | None = None,
        by_events: bool = False,
        webhook_base64: bool = False,
        owner: str = "6280000000001",
        instance_id: str = "8a3c6f5e-0000-4000-8000-000000000001",
        server_url: str = "http://localhost:8080",
        attempts: int = 10,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance, self.api_key, self.instance_token = instance, api_key, instance_token
        self.webhook_headers = dict(webhook_headers or {})
        self.by_events, self.webhook_base64 = by_events, webhook_base64
        self.owner, self.instance_id, self.server_url = owner, instance_id, server_url
        self._messages: dict[str, dict[str, Any]] = {}  # key id -> messageRaw with media
        super().__init__(
            webhook_url,
            sign=None,
            retry_delays=evolution_delays(attempts),
            retryable=lambda status: (
                status is None or (not 200 <= status < 300 and status not in NON_RETRYABLE)
            ),
            webhook_timeout=30.0,
            time_scale=time_scale,
            clock=clock,
        )

    # -- the API ---------------------------------------------------------------------------

    def authorize(self, call: Call) -> Reply | None:
        if call.path.startswith("/media/"):
            return None  # an object-storage URL, not the API
        given = call.headers.get("apikey", "")
        if given and any(
            hmac.compare_digest(given, k) for k in (self.api_key, self.instance_token)
        ):
            if call.params.get("instance", self.instance) != self.instance:
                message = [f'The "{call.params["instance"]}" instance does not exist']
                return (
                    404,
                    {"status": 404, "error": "Not Found", "response": {"message": message}},
                    {},
                )
            return None
        return 401, {"status": 401, "error": "Unauthorized", "message": "Unauthorized"}, {}

    @route("POST", "/message/sendText/{instance}")
    def send_text(self, call: Call) -> Reply:
        body = self._body(call)
        if not body.get("number") or not body.get("text"):
            return _bad_request("number and text are required")
        text = str(body["text"])
        return self._send(call, body, "text", text, {"conversation": text}, None, None)

    @route("POST", "/message/sendMedia/{instance}")
    def send_media(self, call: Call) -> Reply:
        body = self._body(call)
        kind = str(body.get("mediatype", ""))
        upload = next((p.data for p in call.form() if p.name == "file"), None)
        if not body.get("number") or kind not in ("image", "video", "document", "audio"):
            return _bad_request("number and mediatype are required")
        if upload is None and not body.get("media"):
            return _bad_request("media is required")
        data = upload if upload is not None else b64decode(str(body["media"]))
        caption = body.get("caption")
        fields = {
            "url": body.get("media") if upload is None and data is None else None,
            "mimetype": body.get("mimetype"),
            "caption": caption,
            "fileName": body.get("fileName"),
        }
        message = {_MEDIA_MESSAGE[kind]: fields}
        text = str(caption) if caption else None
        return self._send(call, body, kind, text, message, body, data)

    @route("POST", "/message/sendWhatsAppAudio/{instance}")
    def send_audio(self, call: Call) -> Reply:
        body = self._body(call)
        upload = next((p.data for p in call.form() if p.name == "file"), None)
        if not body.get("number") or (upload is None and not body.get("audio")):
            return _bad_request("number and audio are required")
        data = upload if upload is not None else b64decode(str(body["audio"]))
        message = {"audioMessage": {"mimetype": "audio/ogg; codecs=opus", "ptt": True}}
        return self._send(call, body, "voice", None, message, body, data)

    @route("POST", "/chat/getBase64FromMediaMessage/{instance}")
    def get_base64(self, call: Call) -> Reply:
        body = self._body(call)
        key = ((body.get("message") or {}).get("key") or {}).get("id")
        with self.lock:
            found = self._messages.get(str(key))
        if found is None:
            return _bad_request("Message not found")
        media, data = found["media"], found["data"]
        return (
            201,
            {
                "mediaType": _MEDIA_MESSAGE[media.kind],
                "fileName": found["fileName"],
                "caption": found["caption"],
                "size": {"fileLength": len(data)},
                "mimetype": media.mimetype,
                "base64": base64.b64encode(data).decode(),
                "buffer": None,
            },
            {},
        )

    @route("GET", "/media/{name}")
    def media_file(self, call: Call) -> Reply:
        return self.media_reply(call.params["name"])

    def _body(self, call: Call) -> dict[str, Any]:
        if isinstance(call.json, dict):
            return call.json
        return {p.name: p.data.decode(errors="replace") for p in call.form() if p.name != "file"}

    def _send(
        self,
        call: Call,
        body: Mapping[str, Any],
        kind: str,
        text: str | None,
        message: dict[str, Any],
        media: Mapping[str, Any] | None,
        data: bytes | None,
    ) -> Reply:
        chat = _number_jid(str(body["number"]))
        key = new_key_id()
        raw = self._raw(
            {"remoteJid": chat, "fromMe": True, "id": key},
            message,
            push_name="Você",
            status="PENDING",
            source="web",
        )
        sent = Sent(chat, kind, text, key, key, media, data, call)
        self.record(sent, lambda s: [self._emit("send.message", raw)])
        return 201, raw, {}

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
        redeliver: int = 1,
        key_id: str | None = None,
        timestamp: int | None = None,
    ) -> Inbound:
        """A `messages.upsert` for a message in `chat` (a contact's, or `from_me` typed on the
        phone). With `lid` the event is LID-addressed: `remoteJid` is the LID, `remoteJidAlt`
        the phone JID, `addressingMode: 'lid'` (in a group: `participant_lid`, `participantAlt`).
        `redeliver=N` posts the same event N times (Evolution #2675)."""
        chat = jid(chat, "s.whatsapp.net")
        key = key_id or new_key_id()
        data_key: dict[str, Any] = {"remoteJid": chat, "fromMe": from_me, "id": key}
        if is_group(chat) and participant:
            data_key["participant"] = jid(participant, "s.whatsapp.net")
            if participant_lid:
                data_key |= {
                    "participant": jid(participant_lid, "lid"),
                    "addressingMode": "lid",
                    "participantAlt": jid(participant, "s.whatsapp.net"),
                }
        elif lid:
            data_key |= {
                "remoteJid": jid(lid, "lid"),
                "remoteJidAlt": chat,
                "addressingMode": "lid",
            }
        message: dict[str, Any] = {"conversation": text}
        if media is not None:
            name = self.store_media(media, key)
            fields: dict[str, Any] = {
                "url": "https://mmg.whatsapp.net/o1/v/t62.7118-24/enc",
                "mimetype": media.mimetype,
                "fileLength": str(len(media.data)),
                "mediaKey": base64.b64encode(b"k" * 32).decode(),
            }
            if text:
                fields["caption"] = text
            if media.kind == "voice":
                fields["ptt"] = True
            if media.kind == "document":
                fields |= {"fileName": media.filename or name, "title": media.filename or name}
            message = {_MEDIA_MESSAGE[media.kind]: fields, "mediaUrl": f"{self.url}/media/{name}"}
            if self.webhook_base64:
                message["base64"] = base64.b64encode(media.data).decode()
            with self.lock:
                self._messages[key] = {
                    "media": media,
                    "data": media.data,
                    "caption": text or None,
                    "fileName": media.filename or name,
                }
        raw = self._raw(
            data_key,
            message,
            push_name=push_name,
            ts=timestamp,
            status="SERVER_ACK" if from_me else "DELIVERY_ACK",
            source="android",
        )
        return Inbound(key, chat, [self._emit("messages.upsert", raw, copies=redeliver)])

    def event(self, name: str, data: Any) -> Delivery:
        """Emit any event (e.g. one the bridge does not know) in Evolution's envelope."""
        return self._emit(name, data)

    # -- shapes ----------------------------------------------------------------------------

    def _raw(
        self,
        key: dict[str, Any],
        message: dict[str, Any],
        *,
        push_name: str,
        status: str,
        source: str,
        ts: int | None = None,
    ) -> dict[str, Any]:
        media_type = next((k for k in message if k.endswith("Message")), "conversation")
        return {
            "key": key,
            "pushName": push_name,
            "status": status,
            "message": message,
            "contextInfo": None,
            "messageType": media_type,
            "messageTimestamp": ts if ts is not None else int(self.clock()),
            "instanceId": self.instance_id,
            "source": source,
        }

    def _emit(self, event: str, data: Any, *, copies: int = 1) -> Delivery:
        assert self.webhook_url is not None, "no webhook_url configured"
        url = self.webhook_url
        if self.by_events:
            url = f"{url.rstrip('/')}/{event.replace('.', '-').replace('_', '-').lower()}"
        envelope = {
            "event": event,
            "instance": self.instance,
            "data": data,
            "destination": self.webhook_url,
            "date_time": _iso(self.clock()),
            "sender": f"{self.owner}@s.whatsapp.net",
            "server_url": self.server_url,
            "apikey": self.instance_token,
        }
        headers = dict(self.webhook_headers)
        if "jwt_key" in headers:
            headers["Authorization"] = f"Bearer {hs256_jwt(headers.pop('jwt_key'), self.clock())}"
        return self.post(envelope, url=url, headers=headers, copies=copies)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number_jid(number: str) -> str:
    if "@" in number:
        return number
    if "-" in number:
        return f"{number}@g.us"
    return f"{''.join(c for c in number if c.isdigit())}@s.whatsapp.net"


def _bad_request(*messages: str) -> Reply:
    return 400, {"status": 400, "error": "Bad Request", "response": {"message": list(messages)}}, {}

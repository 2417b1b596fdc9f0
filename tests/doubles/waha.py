"""FakeWAHA: the WAHA (devlikeapro/waha) HTTP API and its webhooks, as a bridge meets them.

    with FakeWAHA(webhook_url, api_key="k", hmac_key="s") as waha:
        msg = waha.inbound("628111", "hi", lid="1555@lid", duplicate_as_lid=True)
        ...  # the bridge gets `message` and `message.any`, twice (as @c.us and as @lid)
        # the bridge answers: POST {waha.url}/api/sendText with X-Api-Key: k
        assert waha.sent[0].chat == "628111@c.us"

Served: `POST /api/sendText`, `/api/sendImage`, `/api/sendFile`, `/api/sendVoice`,
`/api/sendVideo` (JSON `{session, chatId, text | file:{mimetype, url|data, filename}, caption?,
reply_to?}`, answered 201 with a message whose `id` is `true_<chatId>_<KEY>`), and
`GET /api/files/{session}/{name}` for inbound media. Every request needs `X-Api-Key` (or the
`x-api-key` query parameter, as WAHA's header-or-query strategy allows).

Webhooks: the envelope `{id: "evt_<ulid>", timestamp(ms), event, session, metadata, me, payload,
engine, environment}`, headers `X-Webhook-Request-Id`, `X-Webhook-Timestamp`, and with an HMAC key
`X-Webhook-Hmac` = hex HMAC-SHA512(key, raw body) plus `X-Webhook-Hmac-Algorithm: sha512`.
`message` carries messages from others only; `message.any` every message, our own API sends with
`fromMe: true, source: "api"`, phone-typed ones with `source: "app"`. The message id is
`<fromMe>_<chat>_<KEY>[_<participant>]`; the KEY (the last segment) is the WhatsApp key id.

Checked in the sources: the send routes, the file/voice/video request shapes and the WAMessage
and envelope fields (`src/api/chatting.controller.ts`, `src/structures/chatting.dto.ts`,
`responses.dto.ts`, `webhooks.dto.ts`, `media.dto.ts`); the retry configuration
`{policy: constant|linear|exponential, delaySeconds, attempts}` (`webhooks.config.dto.ts`, its
example is 2 s x 15); the @c.us/@lid duplicate with one KEY and `source: "app"|"api"` (issues
#1627, #1816, #1689); the `evt_` id and `me.lid` (#1689). Not confirmed: how the Plus sender
spaces `linear`/`exponential` retries (here `delay * n` and `delay * 2**(n-1)`), whether the
request id and `evt_` id stay the same across retries (kept the same here), that `/api/files`
needs the key (assumed), and the `_data` of each engine (a NOWEB-like key is given).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import Call, Delivery, Reply, route
from .gateway import GatewayDouble, Inbound, Media, Sent, b64decode, is_group, jid, new_key_id

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FILE_ROUTES = {
    "/api/sendImage": "image",
    "/api/sendFile": "document",
    "/api/sendVoice": "voice",
    "/api/sendVideo": "video",
}


def ulid(now: float) -> str:
    """A ULID (48-bit milliseconds + 80 random bits, Crockford base32), as WAHA's ids use."""
    value = (int(now * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@dataclass(frozen=True)
class WahaRetries:
    """A webhook's `retries` config; the default is the docs' example."""

    policy: str = "constant"  # constant | linear | exponential
    delay_seconds: float = 2.0
    attempts: int = 15

    def delays(self) -> list[float]:
        growth: dict[str, Callable[[int], float]] = {
            "constant": lambda n: 1.0,
            "linear": lambda n: float(n),
            "exponential": lambda n: 2.0 ** (n - 1),
        }
        return [self.delay_seconds * growth[self.policy](n) for n in range(1, self.attempts)]


class FakeWAHA(GatewayDouble):
    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        api_key: str = "waha-api-key",
        hmac_key: str | None = "waha-hmac-key",
        session: str = "default",
        events: Iterable[str] = ("message", "message.any"),
        retries: WahaRetries | None = None,
        me: str = "6280000000001",
        me_lid: str = "100000000000001",
        me_name: str = "Shop",
        engine: str = "NOWEB",
        custom_headers: Mapping[str, str] | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key, self.hmac_key, self.session = api_key, hmac_key, session
        self.events = set(events)
        self.me, self.me_lid, self.me_name, self.engine = me, me_lid, me_name, engine
        self.custom_headers = dict(custom_headers or {})
        super().__init__(
            webhook_url,
            sign=self._sign,
            retry_delays=(retries or WahaRetries()).delays(),
            time_scale=time_scale,
            clock=clock,
        )

    # -- the API ---------------------------------------------------------------------------

    def authorize(self, call: Call) -> Reply | None:
        given = call.headers.get("x-api-key") or call.arg("x-api-key")
        if given is not None and hmac.compare_digest(given, self.api_key):
            return None
        return 401, {"statusCode": 401, "message": "Unauthorized"}, {}

    @route("POST", "/api/sendText")
    def send_text(self, call: Call) -> Reply:
        body, problem = self._chat_request(call, "text")
        if problem is not None:
            return problem
        return self._send(call, body, "text", str(body["text"]), None, None)

    @route("POST", "/api/sendImage")
    @route("POST", "/api/sendFile")
    @route("POST", "/api/sendVoice")
    @route("POST", "/api/sendVideo")
    def send_file(self, call: Call) -> Reply:
        body, problem = self._chat_request(call, "file")
        if problem is not None:
            return problem
        file = body["file"]
        if not isinstance(file, dict) or not (file.get("url") or file.get("data")):
            return _bad_request("file must have url or data")
        data = b64decode(str(file["data"])) if file.get("data") else None
        caption = body.get("caption")
        kind = _FILE_ROUTES[call.path]
        return self._send(
            call, body, kind, caption if isinstance(caption, str) else None, file, data
        )

    @route("GET", "/api/files/{session}/{name}")
    def file(self, call: Call) -> Reply:
        return self.media_reply(call.params["name"])

    def _chat_request(self, call: Call, field: str) -> tuple[dict[str, Any], Reply | None]:
        body = call.json if isinstance(call.json, dict) else {}
        missing = [f for f in ("chatId", field) if not body.get(f)]
        if missing:
            return body, _bad_request(*(f"{f} should not be empty" for f in missing))
        if body.get("session", "default") != self.session:
            message = f"We didn't find a session with name '{body.get('session')}'."
            return body, (404, {"statusCode": 404, "message": message, "error": "Not Found"}, {})
        return body, None

    def _send(
        self,
        call: Call,
        body: Mapping[str, Any],
        kind: str,
        text: str | None,
        file: Mapping[str, Any] | None,
        data: bytes | None,
    ) -> Reply:
        chat, key = str(body["chatId"]), new_key_id()
        media = None
        if file is not None:
            media = {
                "url": file.get("url"),
                "mimetype": file.get("mimetype"),
                "filename": file.get("filename"),
                "error": None,
            }
        message = self._message(
            key,
            chat,
            from_me=True,
            source="api",
            text=text or "",
            media=media,
            push_name=self.me_name,
            ack=(0, "PENDING"),
        )
        sent = Sent(chat, kind, text, key, message["id"], file, data, call)
        self.record(sent, lambda s: self._report("message.any", message))
        return 201, message, {}

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
        duplicate_as_lid: bool = False,
        key_id: str | None = None,
        reply_to: str | None = None,
        timestamp: int | None = None,
    ) -> Inbound:
        """A message in `chat` from a contact (or typed on the phone, `from_me`): `message`
        (not for `from_me`) and `message.any`, each to the webhook if subscribed. In a group
        (`...@g.us`) `participant` is the sender. `duplicate_as_lid` sends each event again
        with the chat as `lid` (WAHA #1627): another `from` and `id`, the same KEY."""
        chat = jid(chat, "c.us")
        key = key_id or new_key_id()
        ts = timestamp if timestamp is not None else int(self.clock())
        media_field = None
        if media is not None:
            name = self.store_media(media, f"{key}")
            media_field = {
                "url": f"{self.url}/api/files/{self.session}/{name}",
                "mimetype": media.mimetype,
                "filename": media.filename,
                "error": None,
            }
        sender = jid(participant, "c.us") if participant else None
        reply = {"id": reply_to, "participant": None, "body": None} if reply_to else None
        chats = [chat] + ([jid(lid, "lid")] if duplicate_as_lid and lid else [])
        deliveries: list[Delivery] = []
        for event in ("message", "message.any"):
            if from_me and event == "message":
                continue  # `message` is incoming only
            for one in chats:
                payload = self._message(
                    key,
                    one,
                    from_me=from_me,
                    source="app",
                    text=text,
                    media=media_field,
                    push_name=push_name,
                    ts=ts,
                    participant=sender,
                    reply_to=reply,
                )
                deliveries.extend(self._report(event, payload))
        return Inbound(key, chat, deliveries)

    def event(self, name: str, payload: Any) -> list[Delivery]:
        """Emit any event (e.g. one the bridge does not know), if the webhook subscribes to it."""
        return self._report(name, payload, force=True)

    # -- shapes ----------------------------------------------------------------------------

    def _message(
        self,
        key: str,
        chat: str,
        *,
        from_me: bool,
        source: str,
        text: str,
        media: Mapping[str, Any] | None,
        push_name: str,
        ts: int | None = None,
        participant: str | None = None,
        reply_to: Mapping[str, Any] | None = None,
        ack: tuple[int, str] = (1, "SERVER"),
    ) -> dict[str, Any]:
        me = f"{self.me}@c.us"
        group = is_group(chat)
        if group and from_me:
            participant = f"{self.me_lid}@lid"
        serialized = f"{'true' if from_me else 'false'}_{chat}_{key}"
        if group and participant:
            serialized += f"_{participant}"
        origin, target = (chat, chat) if group else ((me, chat) if from_me else (chat, me))
        stamp = ts if ts is not None else int(self.clock())
        data_key = {"remoteJid": chat, "fromMe": from_me, "id": key}
        if participant:
            data_key["participant"] = participant
        return {
            "id": serialized,
            "timestamp": stamp,
            "from": origin,
            "fromMe": from_me,
            "source": source,
            "to": target,
            "participant": participant,
            "author": participant if group else None,
            "body": text,
            "hasMedia": media is not None,
            "media": dict(media) if media is not None else None,
            "ack": ack[0],
            "ackName": ack[1],
            "location": None,
            "vCards": [],
            "replyTo": dict(reply_to) if reply_to else None,
            "_data": {
                "key": data_key,
                "pushName": push_name,
                "messageTimestamp": stamp,
                "message": {"conversation": text},
            },
        }

    def _envelope(self, event: str, payload: Any) -> dict[str, Any]:
        now = self.clock()
        return {
            "id": f"evt_{ulid(now).lower()}",
            "timestamp": int(now * 1000),
            "event": event,
            "session": self.session,
            "metadata": {},
            "me": {
                "id": f"{self.me}@c.us",
                "pushName": self.me_name,
                "lid": f"{self.me_lid}@lid",
                "jid": f"{self.me}@s.whatsapp.net",
            },
            "payload": payload,
            "engine": self.engine,
            "environment": {
                "version": "2025.11.2",
                "engine": self.engine,
                "tier": "PLUS",
                "browser": None,
            },
        }

    def _report(self, event: str, payload: Any, *, force: bool = False) -> list[Delivery]:
        if self.webhook_url is None or not (force or event in self.events):
            return []
        envelope = self._envelope(event, payload)
        headers = {
            **self.custom_headers,
            "User-Agent": "WAHA/2025.11.2",
            "X-Webhook-Request-Id": ulid(self.clock()),
        }
        return [self.post(envelope, headers=headers)]

    def _sign(self, body: bytes, attempt: int) -> dict[str, str]:
        headers = {"X-Webhook-Timestamp": str(int(self.clock() * 1000))}
        if self.hmac_key:
            digest = hmac.new(self.hmac_key.encode(), body, hashlib.sha512).hexdigest()
            headers |= {"X-Webhook-Hmac": digest, "X-Webhook-Hmac-Algorithm": "sha512"}
        return headers


def _bad_request(*messages: str) -> Reply:
    return 400, {"statusCode": 400, "message": list(messages), "error": "Bad Request"}, {}

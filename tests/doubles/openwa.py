"""FakeOpenWA: the OpenWA (rmyndharis/OpenWA) REST API and its webhooks.

    with FakeOpenWA(webhook_url, secret="s", time_scale=0.01) as owa:
        owa.inbound("628111", "hi", duplicates=2)  # two deliveries, one idempotency key
        # the bridge answers: POST {owa.url}/api/sessions/default/messages/send-text, X-API-Key
        assert owa.sent[0].message_id.startswith("true_")

Served (`X-API-Key: <key>` or `Authorization: Bearer <key>`): `POST
/api/sessions/{s}/messages/send-text` `{chatId, text (<= 4096), mentions?}` and `send-image`,
`send-video`, `send-audio` (`ptt: true` for a voice note), `send-document` with `{chatId,
url | base64, mimetype?, filename?, caption?}`, answered 201 `{messageId, timestamp}`; after
`unconfirm_next(n)`, `{messageId: null, timestamp, unconfirmed: true}` (the message still goes
out and its `message.sent` carries an id the caller never saw). Inbound media comes inline, as
`data.media = {mimetype, filename, data (base64), sizeBytes}`, as OpenWA's IncomingMessage does.

Webhooks: `{event, timestamp (ISO), sessionId, idempotencyKey, deliveryId, data}` with headers
`X-OpenWA-Event`, `X-OpenWA-Idempotency-Key` (`msg_<session>_<data.id>`, the same for every
delivery and retry of one message), `X-OpenWA-Delivery-Id` (`dlv_<uuid>`, one per delivery, kept
across its retries), `X-OpenWA-Retry-Count` (0, 1, ...), and with a secret `X-OpenWA-Signature:
sha256=<hex HMAC-SHA256(secret, raw body)>`. Events: `message.received`, `message.sent`.
Retries: `retry_count` attempts in all (default 3), waiting `retry_delay * n` after the n-th
failure (5 s, 10 s), any non-2xx or error retried, 10 s timeout.

Checked in the sources: `src/modules/webhook/webhook.service.ts` (envelope, headers, signature,
`deliverWebhook`'s linear wait, BullMQ `exponential` from 5 s: the same 5 s, 10 s for three
attempts), `utils/idempotency.util.ts` (the key formats), `message.controller.ts` (routes, 201),
`dto/send-message.dto.ts` (fields, `ptt`), `dto/message-responses.dto.ts` (the IncomingMessage
fields: `id`, `from`, `to`, `chatId`, `body`, `type`, `timestamp`, `fromMe`, `isGroup`, `kind`,
`author`, `isLidSender`, `senderPhone`, `contact`, `media`, `quotedMessage`) and issue #464 (the
duplicate). Not confirmed: `messageId: null` with `unconfirmed` (the DTO read says a string;
BRIDGE-APIS cites a newer one), the `@IdempotentSend` header (not in the controller read; not
emulated), `canonicalChatId` in the webhook `data` (given only with `phone` for a `@lid` chat),
and a media download route (none found; media is inline).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .base import Call, Delivery, Reply, route
from .gateway import GatewayDouble, Inbound, Media, Sent, b64decode, is_group, jid, new_key_id, user

_SENDS = {
    "send-image": "image",
    "send-video": "video",
    "send-audio": "audio",
    "send-document": "document",
}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeOpenWA(GatewayDouble):
    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        api_key: str = "owa_k1_testkey",
        session: str = "default",
        secret: str | None = "openwa-secret",
        events: Iterable[str] = ("message.received", "message.sent"),
        retry_count: int = 3,
        retry_delay: float = 5.0,
        me: str = "6280000000001",
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key, self.session, self.secret = api_key, session, secret
        self.events = set(events)
        self.me = me
        self._unconfirmed = 0
        super().__init__(
            webhook_url,
            sign=self._sign,
            retry_delays=[retry_delay * n for n in range(1, retry_count)],
            webhook_timeout=10.0,
            time_scale=time_scale,
            clock=clock,
        )

    def unconfirm_next(self, count: int = 1) -> None:
        """Answer the next `count` sends `{messageId: null, unconfirmed: true}` (still sent)."""
        with self.lock:
            self._unconfirmed += count

    # -- the API ---------------------------------------------------------------------------

    def authorize(self, call: Call) -> Reply | None:
        bearer = call.headers.get("authorization", "")
        given = call.headers.get("x-api-key") or bearer.removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given, self.api_key):
            return (
                401,
                {
                    "statusCode": 401,
                    "message": "Invalid or missing API key",
                    "error": "Unauthorized",
                },
                {},
            )
        if call.params.get("session", self.session) != self.session:
            message = f"Session '{call.params['session']}' not found"
            return 404, {"statusCode": 404, "message": message, "error": "Not Found"}, {}
        return None

    @route("POST", "/api/sessions/{session}/messages/send-text")
    def send_text(self, call: Call) -> Reply:
        body = call.json if isinstance(call.json, dict) else {}
        problems = [f"{f} should not be empty" for f in ("chatId", "text") if not body.get(f)]
        if len(str(body.get("text", ""))) > 4096:
            problems.append("text must be shorter than or equal to 4096 characters")
        if problems:
            return _bad_request(problems)
        return self._send(call, body, "text", str(body["text"]), None, None)

    @route("POST", "/api/sessions/{session}/messages/{action}")
    def send_media(self, call: Call) -> Reply:
        kind = _SENDS.get(call.params["action"])
        if kind is None:
            return (
                404,
                {"statusCode": 404, "message": f"Cannot POST {call.path}", "error": "Not Found"},
                {},
            )
        body = call.json if isinstance(call.json, dict) else {}
        if not body.get("chatId") or not (body.get("url") or body.get("base64")):
            return _bad_request(["chatId and url or base64 are required"])
        if kind == "audio" and body.get("ptt") is True:
            kind = "voice"
        data = b64decode(str(body["base64"])) if body.get("base64") else None
        caption = body.get("caption")
        return self._send(call, body, kind, str(caption) if caption else None, body, data)

    def _send(
        self,
        call: Call,
        body: Mapping[str, Any],
        kind: str,
        text: str | None,
        media: Mapping[str, Any] | None,
        data: bytes | None,
    ) -> Reply:
        chat, key, now = str(body["chatId"]), new_key_id(), self.clock()
        message_id = f"true_{chat}_{key}"
        with self.lock:
            unconfirmed = self._unconfirmed > 0
            self._unconfirmed -= 1 if unconfirmed else 0
        sent = Sent(chat, kind, text, key, None if unconfirmed else message_id, media, data, call)
        data_out = self._data(
            message_id, chat, from_me=True, text=text or "", kind=kind, ts=int(now), push_name=None
        )
        self.record(sent, lambda s: self._report("message.sent", data_out))
        answer: dict[str, Any] = {
            "messageId": None if unconfirmed else message_id,
            "timestamp": int(now),
        }
        if unconfirmed:
            answer["unconfirmed"] = True
        return 201, answer, {}

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
        phone: str | None = None,
        duplicates: int = 1,
        key_id: str | None = None,
        quoted: tuple[str, str] | None = None,
        timestamp: int | None = None,
    ) -> Inbound:
        """A `message.received` for `chat` (`from_me`: typed on the phone, which OpenWA reports
        as `message.sent`). In a group `participant` is the author. For a `@lid` chat, `phone`
        is the resolved number (`senderPhone`, `canonicalChatId`). `duplicates=N` dispatches
        the message N times: N deliveries, new delivery ids, one idempotency key (#464)."""
        chat = jid(chat, "c.us")
        key = key_id or new_key_id()
        author = jid(participant, "c.us") if participant and is_group(chat) else None
        message_id = f"{'true' if from_me else 'false'}_{chat}_{key}" + (
            f"_{author}" if author else ""
        )
        data = self._data(
            message_id,
            chat,
            from_me=from_me,
            text=text,
            kind=media.kind if media else "text",
            ts=timestamp if timestamp is not None else int(self.clock()),
            push_name=push_name,
            author=author,
        )
        sender = author or chat
        if sender.endswith("@lid"):
            data["isLidSender"] = True
            data["senderPhone"] = phone
            if phone and not author:
                data["canonicalChatId"] = jid(phone, "c.us")
        if media is not None:
            data["media"] = {
                "mimetype": media.mimetype,
                "filename": media.filename,
                "data": base64.b64encode(media.data).decode(),
                "sizeBytes": len(media.data),
            }
        if quoted:
            data["quotedMessage"] = {"id": quoted[0], "body": quoted[1]}
        event = "message.sent" if from_me else "message.received"
        deliveries = [d for _ in range(duplicates) for d in self._report(event, data)]
        return Inbound(key, chat, deliveries)

    def event(self, name: str, data: Mapping[str, Any]) -> list[Delivery]:
        """Emit any event (e.g. one the bridge does not know), whatever the subscription."""
        return self._report(name, dict(data), force=True)

    # -- shapes ----------------------------------------------------------------------------

    def _data(
        self,
        message_id: str,
        chat: str,
        *,
        from_me: bool,
        text: str,
        kind: str,
        ts: int,
        push_name: str | None,
        author: str | None = None,
    ) -> dict[str, Any]:
        me = f"{self.me}@c.us"
        group = is_group(chat)
        sender = me if from_me else (author or chat)
        data: dict[str, Any] = {
            "id": message_id,
            "from": me if from_me and not group else chat,
            "to": chat if from_me or group else me,
            "chatId": chat,
            "body": text,
            "type": kind,
            "timestamp": ts,
            "fromMe": from_me,
            "isGroup": group,
            "kind": "group" if group else "individual",
            "contact": {
                "id": sender,
                "number": user(sender),
                "name": push_name,
                "pushName": push_name,
            },
        }
        if author:
            data["author"] = author
        return data

    def _report(self, event: str, data: dict[str, Any], *, force: bool = False) -> list[Delivery]:
        if self.webhook_url is None or not (force or event in self.events):
            return []
        if event.startswith("message."):
            key = f"msg_{self.session}_{data.get('id')}"
        else:  # OpenWA hashes the data of other events
            digest = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:12]
            key = f"evt_{event.replace('.', '_')}_{digest}"
        delivery_id = f"dlv_{uuid.uuid4()}"
        envelope = {
            "event": event,
            "timestamp": iso(self.clock()),
            "sessionId": self.session,
            "idempotencyKey": key,
            "deliveryId": delivery_id,
            "data": data,
        }
        headers = {
            "User-Agent": "OpenWA-Webhook/1.0.0",
            "X-OpenWA-Event": event,
            "X-OpenWA-Idempotency-Key": key,
            "X-OpenWA-Delivery-Id": delivery_id,
        }
        return [self.post(envelope, headers=headers)]

    def _sign(self, body: bytes, attempt: int) -> dict[str, str]:
        headers = {"X-OpenWA-Retry-Count": str(attempt - 1)}
        if self.secret:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-OpenWA-Signature"] = f"sha256={digest}"
        return headers


def _bad_request(messages: list[str]) -> Reply:
    return 400, {"statusCode": 400, "message": messages, "error": "Bad Request"}, {}

"""Each gateway's send API (text and media), its credentials, and its media downloads.

- **waha**: ``POST /api/sendText`` ``{session, chatId, text}``; media through ``/api/sendImage``,
  ``sendVoice``, ``sendVideo``, ``sendFile`` with ``file: {mimetype, data, filename}``;
  ``X-Api-Key``; the answer's ``id`` is ``true_<chat>_<key>``.
- **evolution**: ``POST /message/sendText/{instance}`` ``{number, text}``; media through
  ``/message/sendMedia/{instance}`` (base64), a voice note
  ``/message/sendWhatsAppAudio/{instance}``;
  ``apikey``; the answer's ``key.id``.
- **gowa**: ``POST /send/message`` ``{phone, message}``; media as multipart ``/send/image``,
  ``audio`` (``ptt``), ``video``, ``file``; Basic auth (the ``api_key`` is ``user:password``) and
  ``X-Device-Id``; the answer's ``results.message_id``.
- **openwa**: ``POST /api/sessions/{s}/messages/send-text`` ``{chatId, text}``; media through
  ``send-image``, ``send-audio`` (``ptt``), ``send-video``, ``send-document`` (base64);
  ``X-API-Key``; the answer's ``messageId``, ``true_<chat>_<key>``.

A send answers the raw WhatsApp key id, or None when the gateway accepted the message without
confirming an id (OpenWA's ``messageId: null, unconfirmed: true``): the message went out, so it
is not sent again. Credentials go only to the gateway's own URL, never to a media host it names.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..store.bridges import Gateway
from .calls import Deadline, call, fetch, ok
from .normalize import Media


@dataclass(frozen=True)
class Outgoing:
    """One part of an agent's message: a text, or a file with its caption."""

    text: str
    data: bytes | None = None
    kind: str = "text"  # text | image | audio | video | document
    mimetype: str | None = None
    filename: str | None = None
    voice: bool = False


def _key_of(serialized: Any) -> str | None:
    if not isinstance(serialized, str) or not serialized:
        return None
    parts = serialized.split("_")
    return parts[2] if len(parts) >= 3 else serialized


class GatewayClient:
    def __init__(self, gateway: Gateway, client: httpx.Client, deadline: Deadline) -> None:
        self.gateway = gateway
        self.client = client
        self.deadline = deadline
        self.base = gateway.url.rstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        g = self.gateway
        if g.kind == "waha":
            return {"x-api-key": g.api_key}
        if g.kind == "evolution":
            return {"apikey": g.api_key}
        if g.kind == "gowa":
            basic = base64.b64encode(g.api_key.encode()).decode()
            return {"authorization": f"Basic {basic}", "x-device-id": g.session}
        return {"x-api-key": g.api_key}  # openwa

    def _post(self, path: str, unsent: Callable[[], None] | None = None, **options: Any) -> Any:
        url = self.base + path
        return ok(
            call(self.client, self.deadline, "POST", url, self.headers, unsent=unsent, **options)
        )

    # -- sending -------------------------------------------------------------------------

    def send(self, chat: str, part: Outgoing, unsent: Callable[[], None]) -> str | None:
        """Send ``part`` to ``chat``; the WhatsApp key id, or None if the gateway gave none.
        ``unsent`` is called if the send surely did not reach the gateway."""
        kind, s = self.gateway.kind, self.gateway.session
        if kind == "waha":
            return self._waha(chat, part, unsent, s)
        if kind == "evolution":
            return self._evolution(chat, part, unsent, s)
        if kind == "gowa":
            return self._gowa(chat, part, unsent)
        return self._openwa(chat, part, unsent, s)

    def _waha(
        self, chat: str, part: Outgoing, unsent: Callable[[], None], session: str
    ) -> str | None:
        if part.data is None:
            body: dict[str, Any] = {"session": session, "chatId": chat, "text": part.text}
            answer = self._post("/api/sendText", unsent, json=body)
        else:
            route = {"image": "sendImage", "video": "sendVideo"}.get(part.kind, "sendFile")
            if part.voice:
                route = "sendVoice"
            file = {
                "mimetype": part.mimetype or "application/octet-stream",
                "data": base64.b64encode(part.data).decode(),
                "filename": part.filename or "file",
            }
            body = {"session": session, "chatId": chat, "file": file}
            if part.text:
                body["caption"] = part.text
            answer = self._post(f"/api/{route}", unsent, json=body)
        return _key_of(_field(answer, "id"))

    def _evolution(
        self, chat: str, part: Outgoing, unsent: Callable[[], None], instance: str
    ) -> str | None:
        if part.data is None:
            body = {"number": chat, "text": part.text}
            answer = self._post(f"/message/sendText/{instance}", unsent, json=body)
        elif part.voice:
            body = {"number": chat, "audio": base64.b64encode(part.data).decode()}
            answer = self._post(f"/message/sendWhatsAppAudio/{instance}", unsent, json=body)
        else:
            body = {
                "number": chat,
                "mediatype": part.kind if part.kind != "audio" else "audio",
                "mimetype": part.mimetype or "application/octet-stream",
                "fileName": part.filename or "file",
                "media": base64.b64encode(part.data).decode(),
            }
            if part.text:
                body["caption"] = part.text
            answer = self._post(f"/message/sendMedia/{instance}", unsent, json=body)
        key = _field(answer, "key")
        return _key_of(key.get("id") if isinstance(key, Mapping) else None)

    def _gowa(self, chat: str, part: Outgoing, unsent: Callable[[], None]) -> str | None:
        if part.data is None:
            answer = self._post("/send/message", unsent, json={"phone": chat, "message": part.text})
        else:
            field = {"image": "image", "audio": "audio", "video": "video"}.get(part.kind, "file")
            form = {"phone": chat}
            if part.text:
                form["caption"] = part.text
            if part.voice:
                form["ptt"] = "true"
            mimetype = part.mimetype or "application/octet-stream"
            upload = (part.filename or "file", part.data, mimetype)
            answer = self._post(f"/send/{field}", unsent, data=form, files={field: upload})
        results = _field(answer, "results")
        return _key_of(results.get("message_id") if isinstance(results, Mapping) else None)

    def _openwa(
        self, chat: str, part: Outgoing, unsent: Callable[[], None], session: str
    ) -> str | None:
        prefix = f"/api/sessions/{session}/messages"
        if part.data is None:
            answer = self._post(
                f"{prefix}/send-text", unsent, json={"chatId": chat, "text": part.text}
            )
        else:
            action = {"image": "send-image", "audio": "send-audio", "video": "send-video"}
            body: dict[str, Any] = {
                "chatId": chat,
                "base64": base64.b64encode(part.data).decode(),
                "mimetype": part.mimetype or "application/octet-stream",
                "filename": part.filename or "file",
            }
            if part.text:
                body["caption"] = part.text
            if part.voice:
                body["ptt"] = True
            answer = self._post(
                f"{prefix}/{action.get(part.kind, 'send-document')}", unsent, json=body
            )
        return _key_of(_field(answer, "messageId"))  # None with unconfirmed: true

    # -- inbound media ---------------------------------------------------------------------

    def download(self, media: Media, key_id: str, cap: int) -> tuple[bytes, str | None] | None:
        """The bytes of an inbound message's media; None when gone or larger than ``cap``."""
        if media.data is not None:
            return (media.data, media.mimetype) if len(media.data) <= cap else None
        if media.url is not None:
            url = media.url if "://" in media.url else f"{self.base}/{media.url.lstrip('/')}"
            mine = url.startswith(self.base + "/")
            return fetch(self.client, self.deadline, url, self.headers if mine else {}, cap)
        if self.gateway.kind == "evolution":  # no media URL: Evolution decrypts it on request
            path = f"/chat/getBase64FromMediaMessage/{self.gateway.session}"
            answer = self._post(path, json={"message": {"key": {"id": key_id}}})
            data = _field(answer, "base64")
            if not isinstance(data, str):
                return None
            raw = base64.b64decode(data)
            return (raw, media.mimetype) if len(raw) <= cap else None
        return None


def _field(answer: Any, name: str) -> Any:
    # A 2xx without the field still means "sent": the caller treats it as sent unconfirmed.
    return answer.get(name) if isinstance(answer, Mapping) else None

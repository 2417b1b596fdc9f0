"""Each gateway's webhook, read into one :class:`WhatsAppMessage` or a :class:`Skip` (and why).

What is read where:

- **waha**: ``message``/``message.any``; the key id is the last part of ``payload.id``
  (``<fromMe>_<chat>_<key>[_<participant>]``), the chat its second; ``source`` is ``api`` for
  messages sent through the API; ``_data.key.remoteJidAlt`` is the chat's other JID.
- **evolution**: ``messages.upsert`` and ``send.message``; ``data.key`` holds the id, the chat
  (``remoteJid``, an ``@lid`` with the phone JID in ``remoteJidAlt``) and ``fromMe``.
- **gowa**: ``message``; ``payload.chat_id`` (``chat_lid`` beside it), ``is_from_me``, media as
  a path under the gateway's URL.
- **openwa**: ``message.received`` and ``message.sent`` (our sends and phone-typed ones);
  ``data.id`` is serialized as WAHA's; ``canonicalChatId`` is the phone JID of an ``@lid`` chat;
  media comes inline (base64).

The canonical chat is the phone JID when the event names one, else what it has (an ``@lid``,
resolved later through the bridge's aliases). Anything else (acks, reactions, revokes, session
status, an event of another session) is a :class:`Skip`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MEDIA_KINDS = ("image", "audio", "video", "document")


@dataclass(frozen=True)
class Media:
    kind: str  # one of MEDIA_KINDS
    mimetype: str | None = None
    filename: str | None = None
    url: str | None = None  # to download with the gateway's credentials
    data: bytes | None = None  # carried in the event itself
    voice: bool = False  # an audio recorded as a voice note


@dataclass(frozen=True)
class WhatsAppMessage:
    session: str
    key_id: str  # the raw WhatsApp message key id
    chat: str  # canonical JID: the phone JID when known, a group JID for a group
    alt_jids: tuple[str, ...]  # other JIDs of the same chat (an @lid)
    from_me: bool
    origin: str  # "api" (sent through the gateway's API), "app" (typed on a phone) or ""
    timestamp: float | None
    text: str  # the text, a media caption, or a placeholder for what cannot be carried
    media: Media | None = None
    quoted_key_id: str | None = None
    sender_name: str | None = None
    group_sender: str | None = None  # who wrote a group message (name, else JID)

    @property
    def is_group(self) -> bool:
        return self.chat.endswith("@g.us")


@dataclass(frozen=True)
class Skip:
    reason: str


def is_lid(jid: str) -> bool:
    return jid.endswith("@lid")


def _get(doc: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(name)
    return doc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _canonical(*jids: str | None) -> tuple[str, tuple[str, ...]] | None:
    """The phone (or group) JID among ``jids`` first, the others as aliases."""
    found = list(dict.fromkeys(j for j in jids if j))
    if not found:
        return None
    found.sort(key=is_lid)  # stable: the first non-@lid wins
    return found[0], tuple(found[1:])


def _key_of_serialized(serialized: str) -> str | None:
    parts = serialized.split("_")
    return parts[2] if len(parts) >= 3 and parts[2] else None


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value)
    except (binascii.Error, ValueError):
        return None


def _kind_of(mimetype: str | None) -> str:
    major = (mimetype or "").split("/")[0]
    return major if major in ("image", "audio", "video") else "document"


def _epoch(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value > 10**11 else float(value)  # ms or seconds
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _location_text(lat: Any, lng: Any) -> str:
    if isinstance(lat, (int, float)) and isinstance(lng, (int, float)):
        return f"[location: {lat}, {lng}]"
    return "[location]"


def normalize(kind: str, session: str, doc: Any) -> WhatsAppMessage | Skip:
    """The message ``doc`` (a gateway ``kind``'s decoded webhook) reports, or why it is skipped."""
    if not isinstance(doc, Mapping):
        return Skip("skipped: the body is not a JSON object")
    reader = _READERS.get(kind)
    if reader is None:
        return Skip(f"skipped: unknown gateway {kind!r}")
    return reader(session, doc)


# -- WAHA ----------------------------------------------------------------------------------------


def _waha(session: str, doc: Mapping[str, Any]) -> WhatsAppMessage | Skip:
    event = doc.get("event")
    if event not in ("message", "message.any"):
        return Skip(f"skipped: waha event {event!r}")
    if doc.get("session") not in (None, session):
        return Skip(f"skipped: waha session {doc.get('session')!r} is not the bridge's")
    payload = doc.get("payload")
    serialized = _text(_get(payload, "id"))
    if not isinstance(payload, Mapping) or serialized is None:
        return Skip("skipped: waha message without an id")
    key = _text(_get(payload, "_data", "key", "id")) or _key_of_serialized(serialized)
    chat = serialized.split("_")[1] if serialized.count("_") >= 2 else None
    found = _canonical(chat, _text(_get(payload, "_data", "key", "remoteJidAlt")))
    if key is None or found is None:
        return Skip("skipped: waha message without a key id or a chat")
    canonical, alts = found
    text = _text(payload.get("body")) or ""
    media = None
    raw_media = payload.get("media")
    if payload.get("hasMedia") and isinstance(raw_media, Mapping):
        mimetype = _text(raw_media.get("mimetype"))
        media = Media(
            _kind_of(mimetype),
            mimetype,
            _text(raw_media.get("filename")),
            url=_text(raw_media.get("url")),
            # WhatsApp records voice notes as Ogg Opus; engines that say so mark them ptt.
            voice=(mimetype or "").startswith("audio/ogg")
            or _get(payload, "_data", "message", "audioMessage", "ptt") is True,
        )
    elif isinstance(payload.get("location"), Mapping):
        location = payload["location"]
        text = _location_text(location.get("latitude"), location.get("longitude"))
    elif not text:
        text = _placeholder(_get(payload, "_data", "message"))
    group = canonical.endswith("@g.us")
    return WhatsAppMessage(
        session=session,
        key_id=key,
        chat=canonical,
        alt_jids=alts,
        from_me=payload.get("fromMe") is True,
        origin=_text(payload.get("source")) or "",
        timestamp=_epoch(payload.get("timestamp")),
        text=text,
        media=media,
        quoted_key_id=_text(_get(payload, "replyTo", "id")),
        sender_name=_text(_get(payload, "_data", "pushName")),
        group_sender=(
            _text(_get(payload, "_data", "pushName")) or _text(payload.get("participant"))
            if group
            else None
        ),
    )


# -- Evolution -----------------------------------------------------------------------------------

_EVOLUTION_MEDIA = {
    "imageMessage": "image",
    "videoMessage": "video",
    "audioMessage": "audio",
    "documentMessage": "document",
    "documentWithCaptionMessage": "document",
}


def _evolution(session: str, doc: Mapping[str, Any]) -> WhatsAppMessage | Skip:
    event = doc.get("event")
    if event not in ("messages.upsert", "send.message"):
        return Skip(f"skipped: evolution event {event!r}")
    if doc.get("instance") not in (None, session):
        return Skip(f"skipped: evolution instance {doc.get('instance')!r} is not the bridge's")
    data = doc.get("data")
    key = _get(data, "key")
    key_id = _text(_get(key, "id"))
    found = _canonical(_text(_get(key, "remoteJid")), _text(_get(key, "remoteJidAlt")))
    if not isinstance(data, Mapping) or key_id is None or found is None:
        return Skip("skipped: evolution message without a key id or a chat")
    canonical, alts = found
    message: Mapping[str, Any] = data["message"] if isinstance(data.get("message"), Mapping) else {}
    text = _text(message.get("conversation")) or _text(_get(message, "extendedTextMessage", "text"))
    media = None
    for field, kind in _EVOLUTION_MEDIA.items():
        part = message.get(field)
        if isinstance(part, Mapping):
            mimetype = _text(part.get("mimetype"))
            media = Media(
                kind,
                mimetype,
                _text(part.get("fileName")),
                url=_text(message.get("mediaUrl")),
                data=_b64(message.get("base64")),
                voice=part.get("ptt") is True,
            )
            text = text or _text(part.get("caption"))
            break
    if media is None and text is None:
        location = message.get("locationMessage")
        if isinstance(location, Mapping):
            text = _location_text(location.get("degreesLatitude"), location.get("degreesLongitude"))
        elif "reactionMessage" in message or "protocolMessage" in message:
            return Skip("skipped: evolution reaction or protocol message")
        else:
            text = _placeholder(message)
    group = canonical.endswith("@g.us")
    sender = _text(_get(key, "participantAlt")) or _text(_get(key, "participant"))
    return WhatsAppMessage(
        session=session,
        key_id=key_id,
        chat=canonical,
        alt_jids=alts,
        from_me=_get(key, "fromMe") is True,
        origin="api" if event == "send.message" else "app",
        timestamp=_epoch(data.get("messageTimestamp")),
        text=text or "",
        media=media,
        quoted_key_id=_text(_get(data, "contextInfo", "stanzaId")),
        sender_name=_text(data.get("pushName")),
        group_sender=(_text(data.get("pushName")) or sender) if group else None,
    )


# -- GOWA ----------------------------------------------------------------------------------------


def _gowa(session: str, doc: Mapping[str, Any]) -> WhatsAppMessage | Skip:
    event = doc.get("event")
    if event != "message":
        return Skip(f"skipped: gowa event {event!r}")
    if session not in (doc.get("device_id"), doc.get("session_id")):
        return Skip("skipped: gowa device is not the bridge's")
    payload = doc.get("payload")
    key_id = _text(_get(payload, "id"))
    found = _canonical(_text(_get(payload, "chat_id")), _text(_get(payload, "chat_lid")))
    if not isinstance(payload, Mapping) or key_id is None or found is None:
        return Skip("skipped: gowa message without an id or a chat")
    canonical, alts = found
    text = _text(payload.get("body")) or ""
    media = None
    for field in ("image", "video", "audio", "document"):
        value = payload.get(field)
        if isinstance(value, Mapping):
            path = _text(value.get("path") or value.get("url"))
            caption = _text(value.get("caption"))
        else:
            path, caption = _text(value), None
        if path is not None:
            media = Media(field, None, path.rsplit("/", 1)[-1], url=path, voice=field == "audio")
            text = text or caption or ""
            break
    if media is None and not text:
        if "sticker" in payload:
            text = "[sticker]"
        elif "location" in payload:
            location = payload["location"]
            text = _location_text(_get(location, "latitude"), _get(location, "longitude"))
        else:
            text = "[a message of a kind the bridge cannot carry]"
    group = canonical.endswith("@g.us")
    name = _text(payload.get("from_name")) or _text(payload.get("sender_display_name"))
    return WhatsAppMessage(
        session=session,
        key_id=key_id,
        chat=canonical,
        alt_jids=alts,
        from_me=payload.get("is_from_me") is True,
        origin="",
        timestamp=_epoch(payload.get("timestamp")),
        text=text,
        media=media,
        quoted_key_id=_text(payload.get("replied_to_id")),
        sender_name=name,
        group_sender=(name or _text(payload.get("from"))) if group else None,
    )


# -- OpenWA --------------------------------------------------------------------------------------


def _openwa(session: str, doc: Mapping[str, Any]) -> WhatsAppMessage | Skip:
    event = doc.get("event")
    if event not in ("message.received", "message.sent"):
        return Skip(f"skipped: openwa event {event!r}")
    if doc.get("sessionId") not in (None, session):
        return Skip(f"skipped: openwa session {doc.get('sessionId')!r} is not the bridge's")
    data = doc.get("data")
    serialized = _text(_get(data, "id"))
    found = _canonical(_text(_get(data, "canonicalChatId")), _text(_get(data, "chatId")))
    if not isinstance(data, Mapping) or serialized is None or found is None:
        return Skip("skipped: openwa message without an id or a chat")
    canonical, alts = found
    key_id = _key_of_serialized(serialized) or serialized
    text = _text(data.get("body")) or ""
    media = None
    raw_media = data.get("media")
    kind = _text(data.get("type")) or "text"
    if isinstance(raw_media, Mapping):
        mimetype = _text(raw_media.get("mimetype"))
        media = Media(
            _kind_of(mimetype) if kind not in MEDIA_KINDS else kind,
            mimetype,
            _text(raw_media.get("filename")),
            url=_text(raw_media.get("url")),
            data=_b64(raw_media.get("data")),
            voice=kind in ("ptt", "voice"),
        )
    elif kind == "location" and isinstance(data.get("location"), Mapping):
        text = _location_text(data["location"].get("latitude"), data["location"].get("longitude"))
    elif not text:
        text = f"[{kind}]" if kind != "text" else "[a message the bridge cannot carry]"
    group = canonical.endswith("@g.us")
    name = _text(_get(data, "contact", "name")) or _text(_get(data, "contact", "pushName"))
    return WhatsAppMessage(
        session=session,
        key_id=key_id,
        chat=canonical,
        alt_jids=alts,
        from_me=data.get("fromMe") is True,
        origin="",
        timestamp=_epoch(data.get("timestamp")),
        text=text,
        media=media,
        quoted_key_id=_text(_get(data, "quotedMessage", "id")),
        sender_name=name,
        group_sender=(name or _text(data.get("author"))) if group else None,
    )


_PLACEHOLDERS = {
    "pollCreationMessage": "[poll]",
    "pollCreationMessageV3": "[poll]",
    "stickerMessage": "[sticker]",
    "contactMessage": "[contact card]",
    "contactsArrayMessage": "[contact cards]",
    "liveLocationMessage": "[live location]",
    "call": "[call]",
}


def _placeholder(message: Any) -> str:
    """A short text for a message whose kind the bridge cannot carry (a poll, a call, ...)."""
    if isinstance(message, Mapping):
        for field, text in _PLACEHOLDERS.items():
            if field in message:
                return text
    return "[a message of a kind the bridge cannot carry]"


_READERS = {"waha": _waha, "evolution": _evolution, "gowa": _gowa, "openwa": _openwa}

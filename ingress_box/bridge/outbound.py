"""Chatwoot -> WhatsApp: an agent's message is sent once through the gateway; handover follows.

``message_created`` is sent only when, failing closed: it is ``outgoing``, ``private`` is
exactly false, it is in the bridge's account and inbox, its ``source_id`` does not start with
``WAID:`` (the bridge's own mirror of a WhatsApp message) and no inbound link names it. Each part
(the text, or each attachment with the text as the first one's caption) is marked in the link
table before it is sent and completed with the gateway's id after, so a retry never sends a part
that went out, and the gateway's ``fromMe`` report of it is recognised as an echo. The chat is
the conversation's mapping, else the contact's identifier (a JID) or phone number; the mapping is
then made, so the contact's next message lands in the same conversation. A permanent failure
(a 4xx from the gateway) leaves a private note in the conversation, then dead-letters.

``conversation_updated`` and ``conversation_status_changed`` set the mapping's handover state
when they change the assignee or the status: resolved is ``closed``, else an assignee is
``human`` and none ``bot`` (a conversation being opened alone never makes it ``human``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from ..delivery import Event, HandlerContext
from ..errors import NotFound, PermanentFailure, Waiting
from ..mapping_rules import MappingAccess
from ..store import Database, bridge_links
from ..store import mappings as store_mappings
from ..store.bridges import Bridge
from .calls import Deadline, fetch
from .chatwoot import ChatwootClient
from .gateways import GatewayClient, Outgoing
from .inbound import bind

# How long (in attempt timeouts) a send whose outcome is unknown waits for the gateway's report
# of it before it is sent again (a gateway that never reports its sends gets it twice, rarely).
ECHO_WAIT_TIMEOUTS = 2
_PHONE_SERVER = {"waha": "c.us", "openwa": "c.us", "evolution": "s.whatsapp.net"}


def handle(bridge: Bridge, db: Database, event: Event, ctx: HandlerContext) -> None:
    try:
        doc = json.loads(event.body)
    except ValueError:
        ctx.note = "skipped: the body is not JSON"
        return
    kind = doc.get("event") if isinstance(doc, Mapping) else None
    if kind == "message_created":
        Outbound(bridge, db, ctx).run(doc)
    elif kind in ("conversation_updated", "conversation_status_changed"):
        handover(bridge, db, ctx, doc)
    else:
        ctx.note = f"skipped: chatwoot event {kind!r}"


def _id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _get(doc: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(name)
    return doc


class Outbound:
    def __init__(self, bridge: Bridge, db: Database, ctx: HandlerContext) -> None:
        self.bridge, self.db, self.ctx = bridge, db, ctx
        self.deadline = Deadline(ctx.timeout)
        self.chatwoot = ChatwootClient(bridge.chatwoot, ctx.client, self.deadline)
        self.gateway = GatewayClient(bridge.gateway, ctx.client, self.deadline)

    def skip(self, reason: str) -> None:
        self.ctx.note = f"skipped: {reason}"

    def _reason_to_skip(self, doc: Mapping[str, Any]) -> str | None:
        cw = self.bridge.chatwoot
        if _id(_get(doc, "account", "id")) != cw.account_id:
            return "a message of another account"
        inbox = _id(_get(doc, "inbox", "id")) or _id(_get(doc, "conversation", "inbox_id"))
        if inbox != cw.inbox_id:
            return "a message of another inbox"
        if doc.get("message_type") != "outgoing":
            return f"a message of type {doc.get('message_type')!r}, not outgoing"
        if doc.get("private") is not False:
            return "a private note (or a message not marked public)"
        if str(doc.get("source_id") or "").startswith("WAID:"):
            return "the bridge's own copy of a WhatsApp message"
        return None

    def run(self, doc: Mapping[str, Any]) -> None:
        reason = self._reason_to_skip(doc)
        message_id = _id(doc.get("id"))
        conversation = _id(_get(doc, "conversation", "id"))
        if reason is None and (message_id is None or conversation is None):
            reason = "a message without an id or a conversation"
        if reason is not None or message_id is None or conversation is None:
            return self.skip(reason or "")
        links = bridge_links.of_chatwoot(self.db, self.bridge.id, message_id)
        if any(link.direction == "inbound" for link in links):
            return self.skip(f"message {message_id} was created by the bridge")
        chat = self._chat(doc, conversation)
        if chat is None:
            self._fail(conversation, "no WhatsApp chat is known for this conversation")
        parts = self._parts(doc)
        if not parts:
            return self.skip(f"message {message_id} has nothing to send")
        for number, part in enumerate(parts):
            self._send(chat, message_id, number, part, conversation)
        return None

    def _send(
        self, chat: str, message_id: int, number: int, part: Outgoing, conversation: int
    ) -> None:
        bridge_id, now = self.bridge.id, self.ctx.now()
        link = self.db.write(
            bridge_links.sending(bridge_id, chat, message_id, number, conversation, now)
        )
        if link.wa_id is not None:
            return  # went out on an earlier attempt
        if link.created_at != now:  # marked by an earlier attempt that never learnt the outcome
            waited = now - link.created_at
            if waited < ECHO_WAIT_TIMEOUTS * self.ctx.timeout:
                # If it went out, the gateway's report of it names it (inbound.py): wait for it.
                left = ECHO_WAIT_TIMEOUTS * self.ctx.timeout - waited
                raise Waiting("waiting for the gateway's report of an unanswered send", left)
            self.db.write(bridge_links.unsent(bridge_id, message_id, number))  # none came
            self.db.write(
                bridge_links.sending(bridge_id, chat, message_id, number, conversation, now)
            )

        def unsent() -> None:
            self.db.write(bridge_links.unsent(bridge_id, message_id, number))

        try:
            wa_id = self.gateway.send(chat, part, unsent)
        except PermanentFailure as exc:
            unsent()
            self._fail(conversation, exc.error, exc.status_code)
        if wa_id is None:  # sent, with no id to tell its echo by (OpenWA unconfirmed)
            wa_id = f"{bridge_links.UNCONFIRMED}{message_id}:{number}"
        self.db.write(bridge_links.sent(bridge_id, message_id, number, wa_id, self.ctx.now()))

    def _fail(self, conversation: int, why: str, status: int | None = None) -> NoReturn:
        self.chatwoot.note(conversation, f"Not delivered to WhatsApp: {why}")
        raise PermanentFailure(why, status_code=status)

    def _chat(self, doc: Mapping[str, Any], conversation: int) -> str | None:
        session = self.bridge.gateway.session
        mapping = store_mappings.of_conversation(
            self.db, "chatwoot", self.bridge.id, str(conversation)
        )
        if mapping is not None and "contact_id" in mapping.metadata:
            return mapping.chat
        sender = _get(doc, "conversation", "meta", "sender")
        identifier = _get(sender, "identifier")
        chat: str | None = None
        if isinstance(identifier, str) and "@" in identifier:
            chat = identifier
        else:
            phone = "".join(c for c in str(_get(sender, "phone_number") or "") if c.isdigit())
            if phone:
                server = _PHONE_SERVER.get(self.bridge.gateway.kind, "s.whatsapp.net")
                chat = f"{phone}@{server}"
        if chat is None:
            return None
        metadata = {"identifier": chat}
        if _id(_get(sender, "id")) is not None:
            metadata["contact_id"] = _get(sender, "id")
        source_id = _get(doc, "conversation", "contact_inbox", "source_id")
        if isinstance(source_id, str):
            metadata["source_id"] = source_id
        mappings = MappingAccess(self.db, "chatwoot", self.bridge.id, None, self.ctx.now)
        bind(self.db, mappings, session, chat, conversation, metadata)
        return chat

    def _parts(self, doc: Mapping[str, Any]) -> list[Outgoing]:
        text = str(doc["content"]) if isinstance(doc.get("content"), str) else ""
        attachments = [a for a in doc.get("attachments") or [] if isinstance(a, Mapping)]
        parts: list[Outgoing] = []
        for attachment in attachments:
            caption = "" if parts else text
            url = attachment.get("data_url")
            got = None
            if isinstance(url, str) and url:
                got = fetch(self.ctx.client, self.deadline, url, {}, self.ctx.max_body_bytes)
            kind = {"image": "image", "audio": "audio", "video": "video"}.get(
                str(attachment.get("file_type")), "document"
            )
            name = str(url or "").rsplit("/", 1)[-1] or f"file.{attachment.get('extension')}"
            if got is None:
                note = f"[{kind} {name}: too large or not available to the bridge]"
                parts.append(Outgoing(f"{caption}\n{note}" if caption else note))
                continue
            data, content_type = got
            mimetype = (content_type or "application/octet-stream").split(";")[0].strip()
            voice = kind == "audio" and attachment.get("is_voice_message") is True
            parts.append(Outgoing(caption, data, kind, mimetype, name, voice))
        if not parts and text.strip():
            parts.append(Outgoing(text))
        return parts


def handover(bridge: Bridge, db: Database, ctx: HandlerContext, doc: Mapping[str, Any]) -> None:
    """Set the conversation's mapping state from an assignee or status change."""
    cw = bridge.chatwoot
    conversation = _id(doc.get("id"))
    if _id(doc.get("account_id")) not in (None, cw.account_id) or doc.get("inbox_id") != (
        cw.inbox_id
    ):
        ctx.note = "skipped: a conversation of another account or inbox"
        return
    changed: set[str] = set()
    for change in doc.get("changed_attributes") or []:
        if isinstance(change, Mapping):
            changed |= set(change)
    if conversation is None or not changed & {"assignee_id", "status"}:
        ctx.note = "skipped: no assignee or status change"
        return
    if doc.get("status") == "resolved":
        state = "closed"
    elif _get(doc, "meta", "assignee") is not None:
        state = "human"
    else:
        state = "bot"
    try:
        db.write(
            store_mappings.set_state_of_conversation(
                "chatwoot", bridge.id, str(conversation), state, None, ctx.now()
            )
        )
    except NotFound:
        ctx.note = f"skipped: conversation {conversation} has no mapping"

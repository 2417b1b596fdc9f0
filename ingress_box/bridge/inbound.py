"""WhatsApp -> Chatwoot: a gateway's message becomes one message in the chat's one conversation.

The steps, in order:

1. Read the event (:mod:`.normalize`); record the chat's other JIDs as aliases; resolve an
   ``@lid`` to its phone JID when an alias says so. An event whose lane is not its chat's (it
   was reported under the ``@lid``) waits until the chat's lane has delivered what it took
   earlier.
2. A ``fromMe`` report of a message the bridge sent is dropped (its link has the id). One whose
   id is unknown while a send to the chat is in flight is not decidable yet: retried shortly (the
   chat's lane waits, so order holds). Any other ``fromMe`` was typed on the phone: it becomes an
   ``outgoing`` message.
3. The message is claimed in the link table, before its conversation is looked up: the same
   message reported under the chat's ``@lid`` runs in another lane, and the claim lets only one
   of the two make the conversation (the other waits for it). An attempt that fails before
   posting drops its claim; one found without a Chatwoot id after its attempt is over (its
   outcome is unknown) is taken over by one attempt, which first looks for its ``source_id``
   in the conversation (Chatwoot does not dedupe on it).
4. The conversation is the chat's mapping (plugin ``chatwoot``, instance the bridge id), looked
   up by the raw then the canonical JID; else it is made once: the contact found by its
   identifier (the JID) or created (on 422 adopted, found by identifier then phone), its
   contact-inbox ``source_id`` in the inbox taken or created, an open conversation taken or
   created with that ``source_id``; the mapping is stored before the message is posted with
   ``source_id`` ``WAID:<key id>``. One attempt at a time makes a chat's conversation (an
   opening claim per chat): two lanes of one chat, its phone JID's and its ``@lid``'s, with
   different first messages, would otherwise make two.
5. A 404 on the post (the conversation was deleted) rebuilds the mapping once, in the attempt.

Groups are bridged as one conversation per group (the group's JID is the contact), each message
prefixed with its sender's name; the bridge option ``"groups": "skip"`` skips them instead.
"""

from __future__ import annotations

import json
from typing import Any

from ..delivery import Event, HandlerContext
from ..errors import MappingConflict, RetryLater, Waiting
from ..mapping_rules import MappingAccess
from ..store import Database, bridge_links
from ..store import mappings as store_mappings
from ..store.bridges import Bridge
from .calls import Deadline
from .chatwoot import ChatwootClient
from .gateways import GatewayClient
from .normalize import Skip, WhatsAppMessage, normalize

# A send this many attempt timeouts ago, with no id recorded, may still be reported back.
ECHO_WINDOW_TIMEOUTS = 3


def handle(bridge: Bridge, db: Database, event: Event, ctx: HandlerContext) -> None:
    try:
        doc = json.loads(event.body)
    except ValueError:
        ctx.note = "skipped: the body is not JSON"
        return
    found = normalize(bridge.gateway.kind, bridge.gateway.session, doc)
    if isinstance(found, Skip):
        ctx.note = found.reason
        return
    Inbound(bridge, db, ctx).run(found, event)


class Inbound:
    def __init__(self, bridge: Bridge, db: Database, ctx: HandlerContext) -> None:
        self.bridge, self.db, self.ctx = bridge, db, ctx
        self.deadline = Deadline(ctx.timeout)
        self.chatwoot = ChatwootClient(bridge.chatwoot, ctx.client, self.deadline)
        self.mappings = MappingAccess(db, "chatwoot", bridge.id, None, ctx.now)

    def skip(self, reason: str) -> None:
        self.ctx.note = f"skipped: {reason}"

    def run(self, msg: WhatsAppMessage, event: Event) -> None:
        bridge, db, now = self.bridge, self.db, self.ctx.now()
        for other in msg.alt_jids:
            db.write(bridge_links.alias(bridge.id, other, msg.chat, now))
        chat = bridge_links.canonical(db, bridge.id, msg.chat)
        if msg.is_group and bridge.options.get("groups") == "skip":
            return self.skip("a group message (the bridge's groups option is skip)")
        links = bridge_links.of_wa(db, bridge.id, msg.key_id)
        if msg.from_me and not self._phone_typed(msg, chat, links, now):
            return None
        if any(link.direction == "inbound" and link.cw_message_id for link in links):
            return self.skip(f"message {msg.key_id} is in Chatwoot already")
        earlier = None
        if event.conversation not in (None, chat):
            earlier = bridge_links.earlier_in_lane(db, event.id, chat)
        if earlier is not None:
            # Reported under another JID (its @lid), the message is in another lane than its
            # chat's: it waits for what the chat's lane took before it, so the order holds,
            # and looks again when the first of those is next tried.
            raise Waiting("earlier messages of this chat are still on their way", earlier - now)
        source_id = f"WAID:{msg.key_id}"
        # Media first: a download that fails leaves no claim behind to wait out.
        fields, files = self._message(msg, source_id)
        # The claim comes before the conversation: the same message reported under its @lid
        # runs in another lane at the same time, and only one of them may make the contact's
        # conversation.
        claim, new = db.write(bridge_links.posting(bridge.id, chat, msg.key_id, 0, None, now))
        if new:
            try:
                conversation = self._conversation(msg, chat)
            except BaseException:  # nothing was posted: the next attempt claims it afresh
                db.write(bridge_links.unclaim(bridge.id, msg.key_id, 0, now))
                raise
        else:
            if claim.cw_message_id is not None:
                return self.skip(f"message {msg.key_id} is in Chatwoot already")
            # Another attempt claimed it: wait until it is surely over, then see what it did.
            over = claim.created_at + self.ctx.timeout
            if over > now:
                raise Waiting("another attempt is posting this message", delay=over - now)
            taken = bridge_links.take_over(bridge.id, msg.key_id, 0, claim.created_at, now)
            if not db.write(taken):
                raise Waiting("another attempt took this message over", delay=self.ctx.timeout)
            conversation = claim.cw_conversation_id or self._conversation(msg, chat)
            existing = self.chatwoot.find_message(conversation, source_id)
            if existing is not None:
                self._posted(chat, msg, conversation, existing)
                return None
        message_id = self.chatwoot.post_message(conversation, fields, files)
        if message_id is None:  # deleted out of band: rebuild the mapping, once
            conversation = self._open(msg, chat)
            message_id = self.chatwoot.post_message(conversation, fields, files)
            if message_id is None:
                raise RetryLater(f"conversation {conversation} vanished right after its making")
        self._posted(chat, msg, conversation, message_id)
        return None

    def _phone_typed(
        self, msg: WhatsAppMessage, chat: str, links: list[bridge_links.Link], now: float
    ) -> bool:
        """Whether a ``fromMe`` message was typed on the phone (not the bridge's own send)."""
        if any(link.direction == "outbound" for link in links):
            self.skip(f"the gateway's report of message {msg.key_id}, which the bridge sent")
            return False
        timeout = self.ctx.timeout
        since = now - ECHO_WINDOW_TIMEOUTS * timeout
        # A send whose attempt is over (started a timeout ago) but never learnt its outcome, or
        # that the gateway did not confirm with an id: this report is that send's.
        claimed = bridge_links.claim_echo(
            self.bridge.id, chat, msg.key_id, since, now - timeout, now
        )
        if self.db.write(claimed):
            self.skip(f"the report of message {msg.key_id}, a send the bridge had no id for")
            return False
        if bridge_links.in_flight(self.db, self.bridge.id, chat, now - timeout):
            raise Waiting("a send to this chat is in flight: this may be its echo", delay=1.0)
        return True

    def _posted(self, chat: str, msg: WhatsAppMessage, conversation: int, cw_id: int) -> None:
        self.db.write(
            bridge_links.posted(
                self.bridge.id, chat, msg.key_id, 0, conversation, cw_id, self.ctx.now()
            )
        )

    # -- the conversation --------------------------------------------------------------------

    def _conversation(self, msg: WhatsAppMessage, chat: str) -> int:
        return self._mapped(msg, chat) or self._open(msg, chat, again=True)

    def _mapped(self, msg: WhatsAppMessage, chat: str) -> int | None:
        session = self.bridge.gateway.session
        for jid in dict.fromkeys((msg.chat, chat)):
            mapping = self.mappings.of_chat(session, jid)
            if mapping is not None and mapping.conversation.isdigit():
                return int(mapping.conversation)
        return None

    def _open(self, msg: WhatsAppMessage, chat: str, *, again: bool = False) -> int:
        """The chat's conversation, made by one attempt at a time (the chat's @lid lane may be
        at it too); ``again``: first look once more for a mapping another attempt made."""
        now = self.ctx.now()
        claim = bridge_links.opening(self.bridge.id, chat, now - self.ctx.timeout, now)
        if not self.db.write(claim):
            raise Waiting("another attempt is making this chat's conversation")
        try:
            return (again and self._mapped(msg, chat)) or self._make(msg, chat)
        finally:
            self.db.write(bridge_links.opened(self.bridge.id, chat, now))

    def _make(self, msg: WhatsAppMessage, chat: str) -> int:
        """Find or make the chat's contact, contact-inbox and conversation; map them."""
        cw = self.chatwoot
        phone = phone_number(chat)
        contact = _exact(cw.search_contacts(chat), "identifier", chat)
        if contact is None:
            contact = cw.create_contact(_name(msg, chat), chat, phone)
        if contact is None:  # 422: the identifier or the phone is taken; adopt that contact
            contact = _exact(cw.search_contacts(chat), "identifier", chat)
            if contact is None and phone is not None:
                contact = _exact(cw.search_contacts(phone), "phone_number", phone)
            if contact is None:
                raise RetryLater("Chatwoot refused the contact but none matches it")
        contact_id = int(contact["id"])
        source_id = cw.source_id_in_inbox(contact) or cw.create_contact_inbox(contact_id)
        conversation = cw.open_conversation_of(contact_id)
        if conversation is None:
            conversation = cw.create_conversation(contact_id, source_id)
        bind(
            self.db,
            self.mappings,
            self.bridge.gateway.session,
            chat,
            conversation,
            {"contact_id": contact_id, "source_id": source_id, "identifier": chat},
        )
        return conversation

    # -- the message -------------------------------------------------------------------------

    def _message(
        self, msg: WhatsAppMessage, source_id: str
    ) -> tuple[dict[str, Any], list[tuple[str, bytes, str]]]:
        text = msg.text
        if msg.is_group and not msg.from_me and msg.group_sender:
            text = f"{msg.group_sender}: {text}" if text else f"{msg.group_sender}:"
        fields: dict[str, Any] = {
            "message_type": "outgoing" if msg.from_me else "incoming",
            "private": False,
            "source_id": source_id,
        }
        if msg.quoted_key_id:
            fields["content_attributes"] = {"in_reply_to_external_id": f"WAID:{msg.quoted_key_id}"}
        files: list[tuple[str, bytes, str]] = []
        if msg.media is not None:
            gateway = GatewayClient(self.bridge.gateway, self.ctx.client, self.deadline)
            got = gateway.download(msg.media, msg.key_id, self.ctx.max_body_bytes)
            if got is None:
                placeholder = f"[{msg.media.kind}: too large or no longer available]"
                text = f"{text}\n{placeholder}" if text else placeholder
            else:
                data, kind = got
                mimetype = msg.media.mimetype or kind or "application/octet-stream"
                filename = msg.media.filename or f"{msg.media.kind}{_extension(mimetype)}"
                files.append((filename, data, mimetype.split(";")[0].strip()))
                if msg.media.voice:
                    fields["is_voice_message"] = True
        if text:
            fields["content"] = text
        return fields, files


def bind(
    db: Database,
    mappings: MappingAccess,
    session: str,
    chat: str,
    conversation: int,
    metadata: dict[str, Any],
) -> None:
    """Map ``chat`` to ``conversation``. A mapping Chatwoot's own events taught the box for that
    conversation (keyed by the contact-inbox's source id, not a JID) gives way."""
    try:
        mappings.set(session, chat, str(conversation), metadata=metadata)
    except MappingConflict as exc:
        db.write(store_mappings.delete(exc.mapping_id))
        mappings.set(session, chat, str(conversation), metadata=metadata)


def phone_number(jid: str) -> str | None:
    """The E.164 number of a phone JID; None for an @lid or a group (never LID digits)."""
    user, _, server = jid.partition("@")
    if server in ("c.us", "s.whatsapp.net") and user.isdigit() and 6 <= len(user) <= 15:
        return f"+{user}"
    return None


def _exact(found: list[dict[str, Any]], field: str, value: str) -> dict[str, Any] | None:
    # Chatwoot's search matches substrings: only an equal value is the contact.
    return next((c for c in found if c.get(field) == value and "id" in c), None)


def _name(msg: WhatsAppMessage, chat: str) -> str:
    if msg.is_group:
        return f"WhatsApp group {chat.split('@')[0]}"
    if not msg.from_me and msg.sender_name:
        return msg.sender_name
    return phone_number(chat) or chat.split("@")[0]


def _extension(mimetype: str) -> str:
    subtype = mimetype.split(";")[0].split("/")[-1].strip()
    return f".{subtype}" if subtype.isalnum() else ""

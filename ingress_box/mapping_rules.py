"""Conversation mappings as the rest of the box uses them.

- the rules of a valid mapping, shared by the admin API, the CLI and handlers (:func:`upsert_of`);
- learning a mapping from an accepted event, inside the transaction that accepts it
  (:func:`learned`, :func:`learn`): a conflict becomes a note on the delivery, never a failed ack;
- what a delivery gets: the ``ingress-box-session``/``-chat``/``-handover`` headers
  (:func:`enrichment_headers`) and, for plugin handlers, :class:`MappingAccess`.

The SQL lives in :mod:`ingress_box.store.mappings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import extract
from .errors import InvalidInput, MappingConflict, NotFound
from .plugins import FieldSource, Registry, Route
from .store import Database, bridges
from .store import mappings as store
from .store.instances import INSTANCE_ID, Instance
from .store.mappings import STATES, ConversationMapping, Upsert
from .store.sql import Conn
from .values import check_document, check_unicode

MAX_TEXT = 256  # session, chat and conversation ids; a conversation id is cut to this on ingress
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
UPSERT_FIELDS = ("plugin", "instance", "session", "chat", "conversation", "state", "metadata")


# -- validation --------------------------------------------------------------------------------


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{name} must be at most {MAX_TEXT} characters")
    return check_unicode(name, value)


def check_state(value: object) -> str:
    if value not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}")
    return str(value)


def check_metadata(value: object) -> dict[str, Any]:
    return check_document("metadata", value, MAX_METADATA_DEPTH, MAX_METADATA_BYTES)


def upsert_of(registry: Registry, data: Mapping[str, object]) -> Upsert:
    """A validated upsert from what an operator sent (decoded JSON, or CLI flags)."""
    plugin_id = data.get("plugin")
    if not isinstance(plugin_id, str) or registry.get(plugin_id) is None:
        raise InvalidInput(f"unknown plugin {plugin_id!r} (known: {registry.known()})")
    instance_id = data.get("instance")
    if not isinstance(instance_id, str) or not INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInput(f"instance must match ^{INSTANCE_ID.pattern}$")
    given_state, given_metadata = data.get("state"), data.get("metadata")
    return Upsert(
        plugin_id=plugin_id,
        instance_id=instance_id,
        session=check_text("session", data.get("session")),
        chat=check_text("chat", data.get("chat")),
        conversation=check_text("conversation", data.get("conversation")),
        state=None if given_state is None else check_state(given_state),
        metadata=None if given_metadata is None else check_metadata(given_metadata),
    )


# -- learning from events ----------------------------------------------------------------------


def _candidates(
    source: FieldSource, headers: Mapping[str, str], body: extract.Body
) -> Iterator[object]:
    # A generator, so the body is parsed only when no header already answered.
    for name in source.headers:
        yield headers.get(name)
    if source.json_pointers:
        try:
            doc = body.json()
        except extract.BodyNotJson:
            doc = None
        for pointer in source.json_pointers:
            yield extract.json_pointer(doc, pointer)
    for name in source.form_fields:
        yield body.form().get(name)


def _locate(source: FieldSource, headers: Mapping[str, str], body: extract.Body) -> str | None:
    """The first declared header, JSON pointer or form field with a usable value."""
    for value in _candidates(source, headers, body):
        # Numbers are ids too (Chatwoot's are); booleans and containers are not.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            continue
        found = extract.text(str(value).strip())  # a lone surrogate is "not found" too
        if found:
            # A chat id cut short would name another chat: too long is "not found".
            return found if len(found) <= MAX_TEXT else None
    return None


def learned(
    route: Route,
    instance: Instance,
    headers: Mapping[str, str],
    body: extract.Body,
    conversation: str | None,
) -> Upsert | None:
    """The mapping an event declares, if its route says where the chat is and all parts are there.

    The session is the instance's when the operator set one, else where the route says.
    """
    spec = route.mapping
    # A bridge keeps its own mappings (chat JIDs it resolved); what a bridged Chatwoot inbox
    # calls the contact's source id is a UUID there, not a chat, so nothing is learned.
    if spec is None or conversation is None or instance.handler == bridges.HANDLER:
        return None
    session = instance.session or (
        _locate(spec.session, headers, body) if spec.session is not None else None
    )
    chat = _locate(spec.chat, headers, body)
    if not session or not chat or len(session) > MAX_TEXT:
        return None
    return Upsert(instance.plugin_id, instance.instance_id, session, chat, conversation)


def conflict_note(exc: MappingConflict) -> str:
    return (
        f"mapping_conflict: conversation {exc.conversation} is bound to chat {exc.chat} "
        f"of session {exc.session} (mapping {exc.mapping_id})"
    )


def learn(conn: Conn, delivery_id: str, m: Upsert, now: float) -> None:
    """Upsert inside the accepting transaction; a conflict is noted on the delivery instead."""
    try:
        store.upsert_in(conn, m, now)
    except MappingConflict as exc:  # its savepoint is rolled back; the delivery stands
        store.note_delivery(conn, delivery_id, conflict_note(exc))
    except InvalidInput as exc:  # cannot happen for a learned mapping; still never a failed ack
        store.note_delivery(conn, delivery_id, f"mapping_rejected: {exc}")


# -- what deliveries get -----------------------------------------------------------------------


def enrichment_headers(mapping: ConversationMapping | None) -> dict[str, str]:
    if mapping is None:
        return {}
    return {
        "ingress-box-session": mapping.session,
        "ingress-box-chat": mapping.chat,
        "ingress-box-handover": mapping.state,
    }


class MappingAccess:
    """A handler's read and write access to mappings, bound to its event's plugin instance.

    Writes go through the database's single writer and are committed when a call returns;
    :class:`~ingress_box.errors.MappingConflict` reaches the handler to decide what to do.
    """

    def __init__(
        self,
        db: Database,
        plugin_id: str,
        instance_id: str,
        conversation: str | None,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.plugin_id = plugin_id
        self.instance_id = instance_id
        self.conversation = conversation
        self.clock = clock

    def get(self) -> ConversationMapping | None:
        """The mapping of the event's conversation, if it has one."""
        if self.conversation is None:
            return None
        return store.of_conversation(self.db, self.plugin_id, self.instance_id, self.conversation)

    def of_chat(self, session: str, chat: str) -> ConversationMapping | None:
        return store.of_chat(self.db, self.plugin_id, self.instance_id, session, chat)

    def set(
        self,
        session: str,
        chat: str,
        conversation: str | None = None,
        *,
        state: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ConversationMapping:
        """Bind ``chat`` to ``conversation`` (default: the event's) in this instance."""
        bound = conversation if conversation is not None else self.conversation
        m = Upsert(
            self.plugin_id,
            self.instance_id,
            check_text("session", session),
            check_text("chat", chat),
            check_text("conversation", bound),
            None if state is None else check_state(state),
            None if metadata is None else check_metadata(metadata),
        )
        mapping, _ = self.db.write(store.upsert(m, self.clock()))
        return mapping

    def set_state(
        self, handover: str, metadata: dict[str, Any] | None = None
    ) -> ConversationMapping:
        """Change the handover state of the event's conversation's mapping."""
        if self.conversation is None:
            raise NotFound("the event has no conversation")
        return self.db.write(
            store.set_state_of_conversation(
                self.plugin_id,
                self.instance_id,
                self.conversation,
                check_state(handover),
                None if metadata is None else check_metadata(metadata),
                self.clock(),
            )
        )

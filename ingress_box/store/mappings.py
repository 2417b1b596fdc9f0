"""Conversation mappings: a provider's conversation <-> a chat of a gateway session.

Two unique keys, both enforced by the database: forward ``(session, chat, plugin, instance)``
and reverse ``(plugin, instance, conversation)``. An upsert is one ``INSERT ... ON CONFLICT
(forward key) DO UPDATE`` statement, so concurrent writers of one chat converge on one row
(same id, last conversation wins) and re-pointing a chat frees its old conversation. A clash on
the reverse key surfaces here as :class:`~ingress_box.errors.MappingConflict`, never as an
driver's integrity error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, MappingConflict, NotFound
from .db import Database, Op
from .pages import Page, decode_cursor, page_of
from .sql import INTEGRITY_ERRORS, Conn, Row

STATES = ("bot", "human", "closed")


@dataclass(frozen=True)
class ConversationMapping:
    id: int
    plugin_id: str
    instance_id: str
    session: str
    chat: str
    conversation: str
    state: str
    metadata: dict[str, Any]
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "plugin": self.plugin_id,
            "instance": self.instance_id,
            "session": self.session,
            "chat": self.chat,
            "conversation": self.conversation,
            "state": self.state,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Upsert:
    """What to bind; ``state``/``metadata`` None keep the row's (or the defaults on insert)."""

    plugin_id: str
    instance_id: str
    session: str
    chat: str
    conversation: str
    state: str | None = None
    metadata: dict[str, Any] | None = None


_COLUMNS = (
    "id, plugin_id, instance_id, session, chat, provider_conversation_id, state, "
    "metadata, created_at, updated_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM conversation_mappings"
_BY_CHAT = " WHERE session = ? AND chat = ? AND plugin_id = ? AND instance_id = ?"
_BY_CONVERSATION = " WHERE plugin_id = ? AND instance_id = ? AND provider_conversation_id = ?"

# coalesce keeps the row's state and metadata when the caller gives none; the insert path
# falls back to the column defaults the same way. The row's columns are named with the table
# (PostgreSQL would find a bare ``state`` ambiguous with ``excluded.state``).
_UPSERT = f"""
INSERT INTO conversation_mappings (session, chat, plugin_id, instance_id,
    provider_conversation_id, state, metadata, created_at, updated_at)
VALUES (:session, :chat, :plugin, :instance, :conversation, coalesce(:state, 'bot'),
        coalesce(:metadata, '{{}}'), :now, :now)
ON CONFLICT (session, chat, plugin_id, instance_id) DO UPDATE SET
    provider_conversation_id = excluded.provider_conversation_id,
    state = coalesce(:state, conversation_mappings.state),
    metadata = coalesce(:metadata, conversation_mappings.metadata),
    updated_at = excluded.updated_at
RETURNING {_COLUMNS}
"""


def _from_row(row: Row) -> ConversationMapping:
    return ConversationMapping(
        id=row["id"],
        plugin_id=row["plugin_id"],
        instance_id=row["instance_id"],
        session=row["session"],
        chat=row["chat"],
        conversation=row["provider_conversation_id"],
        state=row["state"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _metadata(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


# -- writes ----------------------------------------------------------------------------------


def upsert_in(conn: Conn, m: Upsert, now: float) -> tuple[ConversationMapping, bool]:
    """Bind inside the caller's transaction; the mapping and whether its row is new.

    The upsert runs in its own savepoint, so a conflict undoes only itself and the caller's
    other writes in the same transaction (a delivery being accepted) stand; on PostgreSQL the
    rollback to it is also what lets the transaction go on after the error.
    """
    # Only labels the answer (201 or 200): the upsert alone decides, and the writer's
    # write lock (BEGIN IMMEDIATE, PostgreSQL's advisory lock) keeps any other writer out
    # between the two statements.
    existed = conn.execute(
        "SELECT 1 FROM conversation_mappings" + _BY_CHAT,
        (m.session, m.chat, m.plugin_id, m.instance_id),
    ).fetchone()
    conn.execute("SAVEPOINT mapping_upsert")
    try:
        row = conn.execute(
            _UPSERT,
            {
                "session": m.session,
                "chat": m.chat,
                "plugin": m.plugin_id,
                "instance": m.instance_id,
                "conversation": m.conversation,
                "state": m.state,
                "metadata": _metadata(m.metadata),
                "now": now,
            },
        ).fetchone()
    except INTEGRITY_ERRORS as exc:
        conn.execute("ROLLBACK TO mapping_upsert")
        conn.execute("RELEASE mapping_upsert")
        raise _translate(conn, m, exc) from exc
    conn.execute("RELEASE mapping_upsert")
    return _from_row(row), existed is None


def _translate(conn: Conn, m: Upsert, exc: Exception) -> Exception:
    """The typed error for a failed upsert: who holds the conversation, else a bad value."""
    holder = conn.execute(
        _SELECT + _BY_CONVERSATION, (m.plugin_id, m.instance_id, m.conversation)
    ).fetchone()
    if holder is not None:
        return MappingConflict(m.conversation, holder["session"], holder["chat"], holder["id"])
    return InvalidInput(f"mapping rejected by the database: {exc}")


def upsert(m: Upsert, now: float) -> Op[tuple[ConversationMapping, bool]]:
    """An op for :meth:`Database.write`: see :func:`upsert_in`."""
    return lambda conn: upsert_in(conn, m, now)


def _update_state(
    where: str,
    params: tuple[Any, ...],
    missing: str,
    state: str,
    metadata: dict[str, Any] | None,
    now: float,
) -> Op[ConversationMapping]:
    def op(conn: Conn) -> ConversationMapping:
        try:
            row = conn.execute(
                "UPDATE conversation_mappings SET state = ?, metadata = coalesce(?, metadata), "
                f"updated_at = ?{where} RETURNING {_COLUMNS}",
                (state, _metadata(metadata), now, *params),
            ).fetchone()
        except INTEGRITY_ERRORS as exc:  # the state CHECK: callers validate first
            raise InvalidInput(f"state must be one of {', '.join(STATES)}") from exc
        if row is None:
            raise NotFound(missing)
        return _from_row(row)

    return op


def set_state(
    mapping_id: int, state: str, metadata: dict[str, Any] | None, now: float
) -> Op[ConversationMapping]:
    """An op that changes one mapping's handover state (and its metadata when given)."""
    return _update_state(
        " WHERE id = ?", (mapping_id,), f"no mapping {mapping_id}", state, metadata, now
    )


def set_state_of_conversation(
    plugin_id: str,
    instance_id: str,
    conversation: str,
    state: str,
    metadata: dict[str, Any] | None,
    now: float,
) -> Op[ConversationMapping]:
    """The same, addressed by the conversation (one statement: no read-then-write race)."""
    return _update_state(
        _BY_CONVERSATION,
        (plugin_id, instance_id, conversation),
        f"no mapping for conversation {conversation!r}",
        state,
        metadata,
        now,
    )


def delete(mapping_id: int) -> Op[ConversationMapping]:
    """An op that removes a mapping (freeing its conversation) and returns what it was."""

    def op(conn: Conn) -> ConversationMapping:
        row = conn.execute(
            f"DELETE FROM conversation_mappings WHERE id = ? RETURNING {_COLUMNS}", (mapping_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no mapping {mapping_id}")
        return _from_row(row)

    return op


def note_delivery(conn: Conn, delivery_id: str, note: str) -> None:
    """Record what happened to a delivery's mapping on the delivery itself."""
    conn.execute("UPDATE deliveries SET note = ? WHERE id = ?", (note, delivery_id))


# -- reads -----------------------------------------------------------------------------------


async def aget(db: Database, mapping_id: int) -> ConversationMapping | None:
    row = await db.aread_one(_SELECT + " WHERE id = ?", (mapping_id,))
    return None if row is None else _from_row(row)


def of_conversation(
    db: Database, plugin_id: str, instance_id: str, conversation: str
) -> ConversationMapping | None:
    row = db.read_one(_SELECT + _BY_CONVERSATION, (plugin_id, instance_id, conversation))
    return None if row is None else _from_row(row)


def of_chat(
    db: Database, plugin_id: str, instance_id: str, session: str, chat: str
) -> ConversationMapping | None:
    row = db.read_one(_SELECT + _BY_CHAT, (session, chat, plugin_id, instance_id))
    return None if row is None else _from_row(row)


@dataclass(frozen=True)
class Filter:
    """Which mappings a listing shows; None means any."""

    plugin_id: str | None = None
    instance_id: str | None = None
    session: str | None = None
    chat: str | None = None
    conversation: str | None = None
    state: str | None = None


def _list_query(f: Filter, cursor: str | None, limit: int) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("plugin_id", f.plugin_id),
        ("instance_id", f.instance_id),
        ("session", f.session),
        ("chat", f.chat),
        ("provider_conversation_id", f.conversation),
        ("state", f.state),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if cursor:
        where.append("id > ?")
        params.append(decode_cursor(cursor, (int,))[0])
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id LIMIT ?"
    params.append(limit + 1)
    return sql, params


def _page(rows: Sequence[Row], limit: int) -> Page[ConversationMapping]:
    return page_of([_from_row(r) for r in rows], limit, lambda m: [m.id])


def list_page(
    db: Database, f: Filter, cursor: str | None = None, limit: int = 100
) -> Page[ConversationMapping]:
    return _page(db.read(*_list_query(f, cursor, limit)), limit)


async def alist_page(
    db: Database, f: Filter, cursor: str | None = None, limit: int = 100
) -> Page[ConversationMapping]:
    return _page(await db.aread(*_list_query(f, cursor, limit)), limit)

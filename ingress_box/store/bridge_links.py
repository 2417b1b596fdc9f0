"""What a bridge remembers about messages and chats: message links and chat aliases.

A **link** ties one part of a WhatsApp message to one Chatwoot message; the same rows are the
bridge's dedup table and its echo ledger:

- ``inbound`` (WhatsApp -> Chatwoot): written when the bridge posts a WhatsApp message to
  Chatwoot, keyed by ``(bridge, wa_id, part)``. A WhatsApp message seen again finds its link;
  Chatwoot's ``message_created`` for the message the bridge created finds it by its id.
- ``outbound`` (Chatwoot -> WhatsApp): written *before* a part of an agent's message is sent
  (``wa_id`` NULL: in flight), completed with the id the gateway answered. A retry skips the
  parts that have a ``wa_id``; the gateway's ``fromMe`` report of a part finds it by ``wa_id``;
  an in-flight row tells the WhatsApp side that a ``fromMe`` it does not know yet may be ours.

An **opening** is the claim of the one attempt that makes a chat's contact and conversation.

An **alias** maps another JID of a chat (an ``@lid``, or the phone JID) to the chat's canonical
JID, filled from every event that carries both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .db import Database
from .sql import Conn, Row

DIRECTIONS = ("inbound", "outbound")


@dataclass(frozen=True)
class Link:
    id: int
    bridge_id: str
    direction: str  # inbound | outbound
    chat: str
    wa_id: str | None
    cw_message_id: int | None
    part: int
    cw_conversation_id: int | None
    created_at: float

    @property
    def in_flight(self) -> bool:
        """An outbound part whose send has not answered (or whose answer was not recorded)."""
        return self.direction == "outbound" and self.wa_id is None


_COLUMNS = (
    "id, bridge_id, direction, chat, wa_id, cw_message_id, part, cw_conversation_id, created_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM bridge_messages"


def _from_row(row: Row) -> Link:
    return Link(**dict(row))


# -- writes (ops for Database.write, or to run inside another op with ``op(conn)``) ----------

_INBOUND = """
INSERT INTO bridge_messages (bridge_id, direction, chat, wa_id, cw_message_id, part,
    cw_conversation_id, created_at, updated_at)
VALUES (?, 'inbound', ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bridge_id, wa_id, part) WHERE wa_id IS NOT NULL DO UPDATE SET
    cw_message_id = coalesce(excluded.cw_message_id, bridge_messages.cw_message_id),
    cw_conversation_id = coalesce(excluded.cw_conversation_id, bridge_messages.cw_conversation_id),
    updated_at = excluded.updated_at
"""


def posted(
    bridge_id: str,
    chat: str,
    wa_id: str,
    part: int,
    cw_conversation_id: int,
    cw_message_id: int | None,
    now: float,
) -> Any:
    """An op that records part ``part`` of WhatsApp message ``wa_id`` as posted to Chatwoot.

    Recording it again (a retry that found the message already posted) only fills what was
    missing.
    """

    def op(conn: Conn) -> None:
        conn.execute(
            _INBOUND, (bridge_id, chat, wa_id, cw_message_id, part, cw_conversation_id, now, now)
        )

    return op


def posting(
    bridge_id: str, chat: str, wa_id: str, part: int, cw_conversation_id: int | None, now: float
) -> Any:
    """An op that claims part ``part`` of WhatsApp message ``wa_id`` for posting to Chatwoot.

    Returns ``(link, new)``: ``new`` False means an earlier (or concurrent) attempt claimed it;
    its link has a ``cw_message_id`` once that post is known to have succeeded.
    """

    def op(conn: Conn) -> tuple[Link, bool]:
        inserted = conn.execute(
            "INSERT INTO bridge_messages (bridge_id, direction, chat, wa_id, part, "
            "cw_conversation_id, created_at, updated_at) VALUES (?, 'inbound', ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (bridge_id, wa_id, part) WHERE wa_id IS NOT NULL DO NOTHING",
            (bridge_id, chat, wa_id, part, cw_conversation_id, now, now),
        ).rowcount
        row = conn.execute(
            f"{_SELECT} WHERE bridge_id = ? AND wa_id = ? AND part = ?", (bridge_id, wa_id, part)
        ).fetchone()
        return _from_row(row), inserted == 1

    return op


def take_over(bridge_id: str, wa_id: str, part: int, claimed_at: float, now: float) -> Any:
    """An op that takes over the claim of a post whose attempt is over (claimed at
    ``claimed_at``, never recorded as posted). True for one caller only: the claim is renewed
    to ``now``, so a second taker sees another time and backs off."""

    def op(conn: Conn) -> bool:
        changed: int = conn.execute(
            "UPDATE bridge_messages SET created_at = ?, updated_at = ? WHERE bridge_id = ? "
            "AND direction = 'inbound' AND wa_id = ? AND part = ? AND cw_message_id IS NULL "
            "AND created_at = ?",
            (now, now, bridge_id, wa_id, part, claimed_at),
        ).rowcount
        return changed == 1

    return op


def unclaim(bridge_id: str, wa_id: str, part: int, claimed_at: float) -> Any:
    """An op that drops a claim made at ``claimed_at`` whose post was surely not made (the
    attempt failed before posting), so the next attempt claims the message afresh."""

    def op(conn: Conn) -> None:
        conn.execute(
            "DELETE FROM bridge_messages WHERE bridge_id = ? AND direction = 'inbound' "
            "AND wa_id = ? AND part = ? AND cw_message_id IS NULL AND created_at = ?",
            (bridge_id, wa_id, part, claimed_at),
        )

    return op


def sending(
    bridge_id: str, chat: str, cw_message_id: int, part: int, cw_conversation_id: int, now: float
) -> Any:
    """An op that marks a part of Chatwoot message ``cw_message_id`` as about to be sent.

    Returns the part's link: a ``wa_id`` on it means that part went out already (skip it).
    """

    def op(conn: Conn) -> Link:
        conn.execute(
            "INSERT INTO bridge_messages (bridge_id, direction, chat, cw_message_id, part, "
            "cw_conversation_id, created_at, updated_at) VALUES (?, 'outbound', ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (bridge_id, cw_message_id, part) WHERE cw_message_id IS NOT NULL "
            "DO NOTHING",
            (bridge_id, chat, cw_message_id, part, cw_conversation_id, now, now),
        )
        row = conn.execute(
            f"{_SELECT} WHERE bridge_id = ? AND cw_message_id = ? AND part = ?",
            (bridge_id, cw_message_id, part),
        ).fetchone()
        return _from_row(row)

    return op


def sent(bridge_id: str, cw_message_id: int, part: int, wa_id: str, now: float) -> Any:
    """An op that completes an outbound part with the WhatsApp id the gateway answered."""

    def op(conn: Conn) -> None:
        conn.execute(
            "UPDATE bridge_messages SET wa_id = ?, updated_at = ? "
            "WHERE bridge_id = ? AND cw_message_id = ? AND part = ?",
            (wa_id, now, bridge_id, cw_message_id, part),
        )

    return op


UNCONFIRMED = "unconfirmed:"  # wa_id prefix of a part the gateway sent without telling its id


def unsent(bridge_id: str, cw_message_id: int, part: int) -> Any:
    """An op that forgets an outbound part in flight whose send surely did not happen (the
    gateway refused the connection), so the next attempt sends it afresh."""

    def op(conn: Conn) -> None:
        conn.execute(
            "DELETE FROM bridge_messages WHERE bridge_id = ? AND direction = 'outbound' "
            "AND cw_message_id = ? AND part = ? AND wa_id IS NULL",
            (bridge_id, cw_message_id, part),
        )

    return op


def claim_echo(
    bridge_id: str, chat: str, wa_id: str, since: float, settled_before: float, now: float
) -> Any:
    """An op that gives ``wa_id`` (a ``fromMe`` report nobody knows) to the oldest part sent to
    ``chat`` since ``since`` that may be it: one the gateway sent without telling its id, or one
    whose send started before ``settled_before`` (its attempt is over) and never learnt its
    outcome. True if there was one: the report is that part's echo."""

    def op(conn: Conn) -> bool:
        row = conn.execute(
            "UPDATE bridge_messages SET wa_id = ?, updated_at = ? WHERE id = ("
            "SELECT id FROM bridge_messages WHERE bridge_id = ? AND chat = ? "
            "AND direction = 'outbound' AND created_at >= ? AND (wa_id LIKE 'unconfirmed:%' "
            "OR (wa_id IS NULL AND created_at < ?)) ORDER BY id LIMIT 1) RETURNING id",
            (wa_id, now, bridge_id, chat, since, settled_before),
        ).fetchone()
        return row is not None

    return op


def opening(bridge_id: str, chat: str, abandoned_before: float, now: float) -> Any:
    """An op that claims the making of ``chat``'s contact and conversation: True for one
    attempt at a time. A claim made before ``abandoned_before`` (its attempt is over) is taken
    over."""

    def op(conn: Conn) -> bool:
        row = conn.execute(
            "INSERT INTO bridge_openings (bridge_id, chat, claimed_at) VALUES (?, ?, ?) "
            "ON CONFLICT (bridge_id, chat) DO UPDATE SET claimed_at = excluded.claimed_at "
            "WHERE bridge_openings.claimed_at < ? RETURNING claimed_at",
            (bridge_id, chat, now, abandoned_before),
        ).fetchone()
        return row is not None

    return op


def opened(bridge_id: str, chat: str, claimed_at: float) -> Any:
    """An op that ends the claim ``opening`` gave at ``claimed_at`` (made, or failed)."""

    def op(conn: Conn) -> None:
        conn.execute(
            "DELETE FROM bridge_openings WHERE bridge_id = ? AND chat = ? AND claimed_at = ?",
            (bridge_id, chat, claimed_at),
        )

    return op


def alias(bridge_id: str, other: str, chat: str, now: float) -> Any:
    """An op that records ``other`` as another JID of canonical ``chat`` (idempotent)."""

    def op(conn: Conn) -> None:
        if other == chat:
            return
        conn.execute(
            "INSERT INTO bridge_aliases (bridge_id, alias, chat, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (bridge_id, alias) DO UPDATE SET chat = excluded.chat, "
            "updated_at = excluded.updated_at WHERE bridge_aliases.chat != excluded.chat",
            (bridge_id, other, chat, now),
        )

    return op


# -- reads -----------------------------------------------------------------------------------


def of_wa(db: Database, bridge_id: str, wa_id: str) -> list[Link]:
    """Every part linked to WhatsApp message ``wa_id`` (either direction), in part order."""
    rows = db.read(f"{_SELECT} WHERE bridge_id = ? AND wa_id = ? ORDER BY part", (bridge_id, wa_id))
    return [_from_row(r) for r in rows]


def of_chatwoot(db: Database, bridge_id: str, cw_message_id: int) -> list[Link]:
    """Every part linked to Chatwoot message ``cw_message_id``, in part order."""
    rows = db.read(
        f"{_SELECT} WHERE bridge_id = ? AND cw_message_id = ? ORDER BY part",
        (bridge_id, cw_message_id),
    )
    return [_from_row(r) for r in rows]


def in_flight(db: Database, bridge_id: str, chat: str, since: float) -> bool:
    """Whether a part for ``chat`` started sending after ``since`` and has no WhatsApp id yet."""
    row = db.read_one(
        "SELECT 1 FROM bridge_messages WHERE bridge_id = ? AND chat = ? AND created_at >= ? "
        "AND direction = 'outbound' AND wa_id IS NULL LIMIT 1",
        (bridge_id, chat, since),
    )
    return row is not None


def earlier_in_lane(db: Database, delivery_id: str, conversation: str) -> float | None:
    """When the first of the pending deliveries that the instance of delivery ``delivery_id``
    took before it in lane ``conversation`` is next due (None: there is none)."""
    row = db.read_one(
        "SELECT min(o.available_at) FROM deliveries AS d JOIN deliveries AS me ON me.id = ? "
        "JOIN outbox AS o ON o.delivery_seq = d.seq "
        "WHERE d.state = 'pending' AND d.seq < me.seq AND d.plugin_id = me.plugin_id "
        "AND d.instance_id = me.instance_id AND d.conversation = ?",
        (delivery_id, conversation),
    )
    return float(row[0]) if row is not None and row[0] is not None else None


def canonical(db: Database, bridge_id: str, jid: str) -> str:
    """The canonical JID of the chat ``jid`` names (``jid`` itself when it has no alias)."""
    row = db.read_one(
        "SELECT chat FROM bridge_aliases WHERE bridge_id = ? AND alias = ?", (bridge_id, jid)
    )
    return str(row["chat"]) if row is not None else jid

"""Bridges: one WhatsApp gateway session joined to one Chatwoot API inbox.

A bridge row holds what the bridge needs to call both APIs; its two instances
(``<gateway kind>/<id>`` for the gateway's webhooks, ``chatwoot/<id>`` for Chatwoot's) hold the
webhook secrets and are created and removed with it, in one transaction (:func:`insert`,
:func:`delete`). The gateway's API key and Chatwoot's API token are secrets: :meth:`Bridge.to_json`
masks them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AlreadyExists, NotFound
from .db import Database
from .instances import Instance, mask, mask_url
from .instances import delete as delete_instance
from .instances import insert as insert_instance
from .sql import INTEGRITY_ERRORS, Conn, Row

GATEWAY_KINDS = ("waha", "evolution", "gowa", "openwa")
HANDLER = "bridge"  # the handler of a bridge's two instances


@dataclass(frozen=True)
class Gateway:
    kind: str  # one of GATEWAY_KINDS: also the plugin id of the gateway's instance
    url: str
    session: str  # WAHA session, Evolution instance name, GOWA device id, OpenWA session id
    api_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class Chatwoot:
    url: str
    account_id: int
    inbox_id: int
    api_token: str = field(repr=False)


@dataclass(frozen=True)
class Bridge:
    id: str
    gateway: Gateway
    chatwoot: Chatwoot
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def instances(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """Its two instances as (plugin, instance): the gateway's, then Chatwoot's."""
        return (self.gateway.kind, self.id), ("chatwoot", self.id)

    def to_json(self) -> dict[str, Any]:
        """The public view: the API key and the token masked."""
        return {
            "id": self.id,
            "gateway": {
                "kind": self.gateway.kind,
                "url": mask_url(self.gateway.url),
                "session": self.gateway.session,
                "api_key": mask(self.gateway.api_key),
            },
            "chatwoot": {
                "url": mask_url(self.chatwoot.url),
                "account_id": self.chatwoot.account_id,
                "inbox_id": self.chatwoot.inbox_id,
                "api_token": mask(self.chatwoot.api_token),
            },
            "options": self.options,
            "created_at": self.created_at,
        }


_COLUMNS = (
    "id, gateway_kind, gateway_url, gateway_api_key, gateway_session, chatwoot_url, "
    "chatwoot_account_id, chatwoot_inbox_id, chatwoot_api_token, options, created_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM bridges"


def _from_row(row: Row) -> Bridge:
    return Bridge(
        id=row["id"],
        gateway=Gateway(
            kind=row["gateway_kind"],
            url=row["gateway_url"],
            session=row["gateway_session"],
            api_key=row["gateway_api_key"],
        ),
        chatwoot=Chatwoot(
            url=row["chatwoot_url"],
            account_id=row["chatwoot_account_id"],
            inbox_id=row["chatwoot_inbox_id"],
            api_token=row["chatwoot_api_token"],
        ),
        options=json.loads(row["options"]),
        created_at=row["created_at"],
    )


# -- writes (ops for Database.write / awrite) ------------------------------------------------


def insert(bridge: Bridge, instances: Sequence[Instance]) -> Any:
    """An op that stores ``bridge`` and its instances together, or nothing (AlreadyExists)."""

    def op(conn: Conn) -> Bridge:
        g, c = bridge.gateway, bridge.chatwoot
        try:
            conn.execute(
                f"INSERT INTO bridges ({_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                (
                    bridge.id,
                    g.kind,
                    g.url,
                    g.api_key,
                    g.session,
                    c.url,
                    c.account_id,
                    c.inbox_id,
                    c.api_token,
                    json.dumps(bridge.options),
                    bridge.created_at,
                ),
            )
        except INTEGRITY_ERRORS as exc:
            raise AlreadyExists(f"bridge {bridge.id} already exists") from exc
        for instance in instances:  # an instance that exists fails the whole op
            insert_instance(instance)(conn)
        return bridge

    return op


def delete(bridge_id: str) -> Any:
    """An op that removes a bridge and its two instances (NotFound if there is none).

    The instances go the way ``instances remove`` takes them (their deliveries stay readable).
    """

    def op(conn: Conn) -> Bridge:
        row = conn.execute(f"{_SELECT} WHERE id = ?", (bridge_id,)).fetchone()
        if row is None:
            raise NotFound(f"bridge {bridge_id} not found")
        bridge = _from_row(row)
        conn.execute("DELETE FROM bridges WHERE id = ?", (bridge_id,))
        for plugin_id, instance_id in bridge.instances:
            with contextlib.suppress(NotFound):  # removed by hand before: the bridge still goes
                delete_instance(plugin_id, instance_id)(conn)
        return bridge

    return op


# -- reads -----------------------------------------------------------------------------------


def get(db: Database, bridge_id: str) -> Bridge | None:
    row = db.read_one(f"{_SELECT} WHERE id = ?", (bridge_id,))
    return _from_row(row) if row is not None else None


def every(db: Database) -> list[Bridge]:
    return [_from_row(r) for r in db.read(f"{_SELECT} ORDER BY id")]


async def aget(db: Database, bridge_id: str) -> Bridge | None:
    row = await db.aread_one(f"{_SELECT} WHERE id = ?", (bridge_id,))
    return _from_row(row) if row is not None else None


async def aevery(db: Database) -> list[Bridge]:
    return [_from_row(r) for r in await db.aread(f"{_SELECT} ORDER BY id")]


# A bridge's conversations are the mappings of its Chatwoot instance (the reverse index counts).
_MAPPING_COUNTS = """
SELECT b.id, count(m.id) FROM bridges AS b
LEFT JOIN conversation_mappings AS m ON m.plugin_id = 'chatwoot' AND m.instance_id = b.id
GROUP BY b.id
"""


def mapping_counts(db: Database) -> dict[str, int]:
    """The number of conversation mappings of each bridge, by bridge id."""
    return {r[0]: r[1] for r in db.read(_MAPPING_COUNTS)}


async def amapping_counts(db: Database) -> dict[str, int]:
    return {r[0]: r[1] for r in await db.aread(_MAPPING_COUNTS)}


@dataclass(frozen=True)
class Side:
    """One of a bridge's instances as the Bridges page shows it: what it holds, how it went."""

    plugin_id: str
    instance_id: str
    enabled: bool
    pending: int  # in the outbox (a parked head included)
    dead_open: int  # dead letters not redriven
    last_state: str | None  # the newest delivery's state; None before the first one


# The outbox and the open dead letters are small (they follow the backlog, not the history);
# the newest delivery is the last row of the instance's (plugin, instance, seq) index.
_SIDES = """
SELECT i.plugin_id, i.instance_id, i.enabled,
       (SELECT count(*) FROM outbox AS o JOIN deliveries AS d ON d.seq = o.delivery_seq
        WHERE d.plugin_id = i.plugin_id AND d.instance_id = i.instance_id) AS pending,
       (SELECT count(*) FROM dead_letters AS x WHERE x.redriven_at IS NULL
        AND x.plugin_id = i.plugin_id AND x.instance_id = i.instance_id) AS dead_open,
       (SELECT d.state FROM deliveries AS d
        WHERE d.plugin_id = i.plugin_id AND d.instance_id = i.instance_id
        ORDER BY d.seq DESC LIMIT 1) AS last_state
FROM instances AS i WHERE i.handler = 'bridge'
"""


async def asides(db: Database) -> dict[tuple[str, str], Side]:
    """Every bridge instance's :class:`Side`, by (plugin, instance)."""
    rows = await db.aread(_SIDES)
    return {
        (r["plugin_id"], r["instance_id"]): Side(**{**dict(r), "enabled": bool(r["enabled"])})
        for r in rows
    }

"""Instances: one configured receiver of a plugin (its secrets, its target, its lane policy)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import AlreadyExists, NotFound
from .db import Database
from .pages import Page, decode_cursor, page_of

LANE_POLICIES = ("progress", "strict")
INSTANCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what CONTRACT allows as an instance id


@dataclass(frozen=True)
class Instance:
    plugin_id: str
    instance_id: str
    secret: str = field(repr=False)
    outbound_secret: str = field(repr=False)
    created_at: float
    updated_at: float
    enabled: bool = True
    handler: str = "forward"
    target_url: str | None = None
    previous_secret: str | None = field(default=None, repr=False)
    previous_secret_until: float | None = None
    verify_token: str | None = field(default=None, repr=False)
    session: str | None = None
    lane_policy: str = "progress"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def shown_target_url(self) -> str | None:
        """The target URL as people may see it: the password of its userinfo masked."""
        return mask_url(self.target_url)

    def valid_secrets(self, now: float) -> list[str]:
        """The current secret and, within its grace window, the one it replaced."""
        secrets = [self.secret]
        if self.previous_secret and (self.previous_secret_until or 0) > now:
            secrets.append(self.previous_secret)
        return secrets

    def to_json(self) -> dict[str, Any]:
        """The public view: secrets masked."""
        # Shallow, unlike asdict(): copying the config deeply recurses, and it is not changed.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["plugin"] = data.pop("plugin_id")
        data["instance"] = data.pop("instance_id")
        for name in ("secret", "outbound_secret", "verify_token", "previous_secret"):
            data[name] = mask(data[name])
        data["target_url"] = self.shown_target_url
        headers = data["config"].get("headers")
        if isinstance(headers, dict):  # extra headers sent to the target carry its credentials
            data["config"] = {
                **data["config"],
                "headers": {k: mask(str(v)) for k, v in headers.items()},
            }
        return data


def mask(value: str | None) -> str | None:
    if not value:
        return value
    return "****" + value[-4:] if len(value) >= 16 else "****"


def mask_url(url: str | None) -> str | None:
    """``url`` with the password of ``user:password@`` replaced (the user name stays, to tell
    which credential it is)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL the rules let in: show none of it
        return "****"
    if password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


_COLUMNS = (
    "plugin_id, instance_id, enabled, handler, target_url, secret, previous_secret, "
    "previous_secret_until, verify_token, outbound_secret, session, lane_policy, config, "
    "created_at, updated_at"
)


def _from_row(row: sqlite3.Row) -> Instance:
    data = dict(row)
    data["enabled"] = bool(data["enabled"])
    data["config"] = json.loads(data["config"])
    return Instance(**data)


def _values(inst: Instance) -> tuple[Any, ...]:
    return (
        inst.plugin_id,
        inst.instance_id,
        int(inst.enabled),
        inst.handler,
        inst.target_url,
        inst.secret,
        inst.previous_secret,
        inst.previous_secret_until,
        inst.verify_token,
        inst.outbound_secret,
        inst.session,
        inst.lane_policy,
        json.dumps(inst.config),
        inst.created_at,
        inst.updated_at,
    )


# -- writes (ops for Database.write / awrite) ------------------------------------------------


def insert(inst: Instance) -> Any:
    def op(conn: sqlite3.Connection) -> Instance:
        try:
            conn.execute(
                f"INSERT INTO instances ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                _values(inst),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(
                f"instance {inst.plugin_id}/{inst.instance_id} already exists"
            ) from exc
        return inst

    return op


def _get_in(conn: sqlite3.Connection, plugin_id: str, instance_id: str) -> Instance:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM instances WHERE plugin_id = ? AND instance_id = ?",
        (plugin_id, instance_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"no instance {plugin_id}/{instance_id}")
    return _from_row(row)


def update(plugin_id: str, instance_id: str, now: float, **changes: Any) -> Any:
    """An op that applies ``changes`` (Instance field names) and returns the new Instance."""

    def op(conn: sqlite3.Connection) -> Instance:
        current = _get_in(conn, plugin_id, instance_id)
        new = replace(current, updated_at=now, **changes)
        conn.execute(
            "UPDATE instances SET enabled = ?, handler = ?, target_url = ?, secret = ?, "
            "previous_secret = ?, previous_secret_until = ?, verify_token = ?, "
            "outbound_secret = ?, session = ?, lane_policy = ?, config = ?, updated_at = ? "
            "WHERE plugin_id = ? AND instance_id = ?",
            (
                int(new.enabled),
                new.handler,
                new.target_url,
                new.secret,
                new.previous_secret,
                new.previous_secret_until,
                new.verify_token,
                new.outbound_secret,
                new.session,
                new.lane_policy,
                json.dumps(new.config),
                new.updated_at,
                plugin_id,
                instance_id,
            ),
        )
        return new

    return op


def rotate(
    plugin_id: str, instance_id: str, new_secret: str, grace_seconds: float, now: float
) -> Any:
    """An op: the new secret verifies at once, the old one until ``now + grace_seconds``."""

    def op(conn: sqlite3.Connection) -> Instance:
        current = _get_in(conn, plugin_id, instance_id)
        change = update(
            plugin_id,
            instance_id,
            now,
            secret=new_secret,
            previous_secret=current.secret if grace_seconds > 0 else None,
            previous_secret_until=now + grace_seconds if grace_seconds > 0 else None,
        )
        result: Instance = change(conn)
        return result

    return op


def delete(plugin_id: str, instance_id: str) -> Any:
    def op(conn: sqlite3.Connection) -> None:
        cur = conn.execute(
            "DELETE FROM instances WHERE plugin_id = ? AND instance_id = ?",
            (plugin_id, instance_id),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no instance {plugin_id}/{instance_id}")

    return op


# -- reads -----------------------------------------------------------------------------------

_GET = f"SELECT {_COLUMNS} FROM instances WHERE plugin_id = ? AND instance_id = ?"
_VERSION = "SELECT value FROM meta WHERE key = 'instances_version'"


def get(db: Database, plugin_id: str, instance_id: str) -> Instance | None:
    row = db.read_one(_GET, (plugin_id, instance_id))
    return _from_row(row) if row is not None else None


def version(db: Database) -> str:
    """Changes whenever any process changes any instance (a trigger bumps it)."""
    row = db.read_one(_VERSION)
    return str(row[0]) if row is not None else ""


def version_in(conn: sqlite3.Connection) -> str:
    """The same, read inside a transaction (the writer's)."""
    row = conn.execute(_VERSION).fetchone()
    return str(row[0]) if row is not None else ""


def _list_query(plugin_id: str | None, cursor: str | None, limit: int) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if plugin_id:
        where.append("plugin_id = ?")
        params.append(plugin_id)
    if cursor:
        after = decode_cursor(cursor, (str, str))
        where.append("(plugin_id, instance_id) > (?, ?)")
        params.extend(after)
    sql = f"SELECT {_COLUMNS} FROM instances"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY plugin_id, instance_id LIMIT ?"
    params.append(limit + 1)
    return sql, params


async def alist_page(
    db: Database, plugin_id: str | None = None, cursor: str | None = None, limit: int = 100
) -> Page[Instance]:
    rows = await db.aread(*_list_query(plugin_id, cursor, limit))
    return page_of([_from_row(r) for r in rows], limit, lambda i: [i.plugin_id, i.instance_id])


async def aget(db: Database, plugin_id: str, instance_id: str) -> Instance | None:
    row = await db.aread_one(_GET, (plugin_id, instance_id))
    return _from_row(row) if row is not None else None


# -- what the doctor looks for -----------------------------------------------------------------

_NO_TARGET = """
SELECT plugin_id || '/' || instance_id FROM instances
WHERE enabled = 1 AND handler = 'forward' AND coalesce(trim(target_url), '') = ''
ORDER BY 1
"""
_NO_PUBLIC_URL = """
SELECT plugin_id || '/' || instance_id FROM instances
WHERE plugin_id IN (SELECT value FROM json_each(?))
  AND coalesce(json_extract(config, '$.public_url'), '') = ''
ORDER BY 1
"""


def without_target_in(conn: sqlite3.Connection) -> list[str]:
    """``plugin/instance`` of enabled forward instances with no target URL (on ``conn``)."""
    return [r[0] for r in conn.execute(_NO_TARGET)]


def without_public_url_in(conn: sqlite3.Connection, plugin_ids: Collection[str]) -> list[str]:
    """``plugin/instance`` of instances of these plugins with no ``public_url`` in their config."""
    return [r[0] for r in conn.execute(_NO_PUBLIC_URL, (json.dumps(sorted(plugin_ids)),))]


_MISSING: Any = object()


class InstanceCache:
    """Instances by key, valid for one value of the instances version.

    Triggers bump that version on any change by any process (the CLI included). The ingress
    reads no database on its hot path: an acceptance checks the version inside its own write
    transaction (see store.acceptor), and a rejection or a challenge re-reads it before
    answering, so a rotated secret or a disabled or deleted instance is never served from a
    stale entry. The worker refreshes it once per claim. Safe to share between threads.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self.version = version(db)
        self._items: dict[tuple[str, str], Instance | None] = {}

    def get(self, plugin_id: str, instance_id: str) -> Instance | None:
        key = (plugin_id, instance_id)
        found: Instance | None = self._items.get(key, _MISSING)
        if found is _MISSING:  # (another thread may clear the dict meanwhile: use the local)
            if len(self._items) > 10_000:  # unknown ids are cached too: keep that bounded
                self._items.clear()
            found = get(self._db, plugin_id, instance_id)
            self._items[key] = found
        return found

    def reset(self, version: str) -> bool:
        """Adopt ``version``; True (and an empty cache) when it differs from the one held."""
        if version == self.version:
            return False
        self._items.clear()
        self.version = version
        return True

    def refresh(self) -> bool:
        """Re-read the version; True when something changed since the cache was filled."""
        return self.reset(version(self._db))

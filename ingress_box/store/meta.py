"""The ``meta`` table: a few named values of the box itself (the admin token's hash, probes)."""

from __future__ import annotations

import secrets
import sqlite3

from .db import Op

ADMIN_TOKEN_KEY = "admin_token_sha256"
PROBE_KEY = "ready_probe"


def put(key: str, value: str) -> Op[None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    return op


def put_once(key: str, value: str) -> Op[str]:
    """Store ``value`` unless ``key`` has one already; the value kept, either way."""

    def op(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value)
        )
        return str(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    return op


def probe(size: int) -> Op[None]:
    """Rewrite a value of ``size`` bytes: its commit writes as many new pages as a delivery of
    that size, so it fails where a delivery's commit would (disk full, a file size limit).

    Random text, because SQLite skips writing the pages of an overwrite that changes nothing.
    """

    def op(conn: sqlite3.Connection) -> None:
        put(PROBE_KEY, secrets.token_hex(size // 2))(conn)

    return op

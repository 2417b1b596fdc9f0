"""What every store function may assume of the connection it is given, on either engine.

An op (see :meth:`Database.submit`) gets a :class:`Conn`: SQLite's own connection, or
:class:`~ingress_box.store.postgres.PgConn` on PostgreSQL. Both take ``?`` and ``:name``
parameters and give rows that index by position and by column name. Where the two dialects
differ, a function holds one literal text per engine and picks it with :func:`dialect`::

    _INSERT = {"sqlite": "INSERT OR IGNORE ...", "postgresql": "INSERT ... ON CONFLICT DO NOTHING"}
    conn.execute(_INSERT[dialect(conn)], params)

The engines' errors are told apart by kind, not by driver: :data:`INTEGRITY_ERRORS` is what a
broken constraint raises on either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

Params = Sequence[Any] | dict[str, Any]
Dialect = Literal["sqlite", "postgresql"]


class Row(Protocol):
    def __getitem__(self, key: int | str) -> Any: ...
    def keys(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    @property
    def lastrowid(self) -> int | None: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """The part of a connection the store's functions use."""

    def execute(self, sql: str, parameters: Params = ..., /) -> Any: ...
    def executemany(self, sql: str, parameters: Any, /) -> Any: ...
    @property
    def in_transaction(self) -> bool: ...


def dialect(conn: Any) -> Dialect:
    """Which engine ``conn`` (a connection, or a Database) speaks."""
    found: Dialect = getattr(conn, "dialect", "sqlite")
    return found


def _integrity_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:  # the PostgreSQL extra is not installed: only SQLite can raise
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def _database_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


INTEGRITY_ERRORS = _integrity_errors()  # a UNIQUE, CHECK or foreign key constraint refused
DATABASE_ERRORS = _database_errors()  # anything the engine raised

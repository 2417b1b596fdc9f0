"""The PostgreSQL server tests run against: ``INGRESS_BOX_TEST_POSTGRESQL`` names it (a URL
whose role may create schemas; CI starts one). Each test gets a schema of its own, dropped
after it, so tests never see each other's rows. Without the variable, PostgreSQL runs skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator

import pytest

from ingress_box.config import DatabaseUrl
from ingress_box.store import Database
from ingress_box.store.postgres import WRITE_LOCK, PgDatabase
from ingress_box.store.postgres import connect as pg_connect
from ingress_box.store.sql import Conn

ENV = "INGRESS_BOX_TEST_POSTGRESQL"
_numbers = itertools.count(1)


def server_url() -> str | None:
    return os.environ.get(ENV) or None


def describe() -> str:
    return "at " + ENV if server_url() else f"not configured (set {ENV})"


def with_search_path(url: str, schema: str) -> DatabaseUrl:
    """``url`` with every connection's search_path set to ``schema``."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-csearch_path={schema}"))
    return DatabaseUrl(parts._replace(query=urllib.parse.urlencode(query)).geturl())


@contextlib.contextmanager
def fresh_schema() -> Iterator[DatabaseUrl]:
    """A URL whose connections work in a new, empty schema (dropped afterwards)."""
    url = server_url()
    if url is None:
        pytest.skip(f"PostgreSQL is not configured: set {ENV} to a server URL")
    import psycopg

    schema = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextlib.contextmanager
def outside(db: Database) -> Iterator[Conn]:
    """A connection of its own to ``db``'s store, in autocommit mode: a write another process
    makes (the box's caches must notice it)."""
    if isinstance(db, PgDatabase):
        conn = pg_connect(db.url)
        try:
            yield conn
        finally:
            conn.close()
        return
    lite = sqlite3.connect(db.path, isolation_level=None)
    try:
        yield lite
    finally:
        lite.close()


@contextlib.contextmanager
def write_locked(db: Database) -> Iterator[None]:
    """Another process in the middle of a write transaction: it holds the store's write lock
    (SQLite's, or PostgreSQL's advisory one) until the block ends."""
    with outside(db) as conn:
        if isinstance(db, PgDatabase):
            conn.execute("BEGIN")
            conn.execute(WRITE_LOCK)
        else:
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")

"""All SQL lives in this package; ``schema.sql`` is the schema (``postgres_schema.sql`` on
PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from ..config import DatabaseUrl
from .db import Database


def open_database(
    location: Path | str,
    *,
    synchronous: str = "FULL",
    busy_timeout: float = 5.0,
    readonly: bool = False,
) -> Database:
    """The store at ``location`` (a SQLite file, or a ``postgresql://`` URL), not yet opened."""
    if isinstance(location, str) and DatabaseUrl.matches(location):
        from .postgres import PgDatabase  # psycopg is imported only by boxes that use it

        return PgDatabase(location, busy_timeout=busy_timeout, readonly=readonly)
    return Database(
        Path(location), synchronous=synchronous, busy_timeout=busy_timeout, readonly=readonly
    )


__all__ = ["Database", "open_database"]

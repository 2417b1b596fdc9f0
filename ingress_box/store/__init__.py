"""All SQL lives in this package; ``schema.sql`` is the schema."""

from .db import Database

__all__ = ["Database"]

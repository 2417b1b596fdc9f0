"""Keyset pagination: a page of items and an opaque cursor to the next one.

A listing fetches ``LIMIT limit + 1`` rows: the extra row only says that there is a next page,
and :func:`page_of` turns the rows into that page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import InvalidInput
from ..values import is_text

T = TypeVar("T")

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def page_of(items: list[T], limit: int, key: Callable[[T], list[Any]]) -> Page[T]:
    """The first ``limit`` of ``items`` (fetched with ``LIMIT limit + 1``), and when there were
    more, the cursor that ``key`` makes of the last one shown."""
    more = len(items) > limit
    items = items[:limit]
    return Page(items, encode_cursor(key(items[-1])) if more and items else None)


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: tuple[type, ...]) -> list[Any]:
    """The key a cursor holds; it must be one value of each of ``kinds`` (str or int)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput("cursor is not one this server gave") from exc
    if not (
        isinstance(key, list)
        and len(key) == len(kinds)
        and all(_fits(value, kind) for value, kind in zip(key, kinds, strict=True))
    ):
        raise InvalidInput("cursor is not one this server gave")
    return key


def _fits(value: Any, kind: type) -> bool:
    if kind is int:  # SQLite integers are 64-bit; bool is an int to Python but not to us
        return type(value) is int and -(2**63) <= value < 2**63
    if kind is str:  # a lone surrogate ("\ud800") is valid JSON but cannot be bound in SQL
        return type(value) is str and is_text(value)
    return type(value) is kind


def clamp_limit(raw: str | int | None, default: int = 100, maximum: int = MAX_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError as exc:
        raise InvalidInput("limit must be a whole number") from exc
    if not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}")
    return limit

"""Checks of values an operator gives: text that can be stored and shown, bounded documents.

Values arrive from untrusted JSON or flags; what passes here can be stored in SQLite and
written back as UTF-8 JSON without surprises.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from .errors import InvalidInput


def is_text(value: str) -> bool:
    """Whether ``value`` can be stored and shown: it encodes as UTF-8, so no lone surrogate
    (a valid JSON escape such as ``"\ud800"``, which SQLite and UTF-8 answers refuse)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_utf8(raw: bytes) -> bool:
    """Whether ``raw`` is UTF-8 text (what the full-text index takes)."""
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_unicode(name: str, value: str) -> str:
    """``value`` when :func:`is_text`, else InvalidInput naming the field."""
    if not is_text(value):
        raise InvalidInput(f"{name} must be valid Unicode (no lone surrogates)")
    return value


def _depth(value: object, limit: int) -> int:
    """How deep ``value`` nests (a scalar is 0), counted without recursion, up to past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_document(name: str, value: object, max_depth: int, max_bytes: int) -> dict[str, Any]:
    """A JSON object an operator gave, bounded in depth and size, all of its text storable."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a JSON object")
    if _depth(value, max_depth) > max_depth:
        raise InvalidInput(f"{name} must nest at most {max_depth} levels deep")
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
        size = len(json.dumps(value))  # as stored
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name} must be valid Unicode (no lone surrogates)") from exc
    except (TypeError, ValueError) as exc:  # from the CLI: anything JSON cannot say
        raise InvalidInput(f"{name} must be plain JSON: {exc}") from exc
    if size > max_bytes:
        raise InvalidInput(f"{name} must be at most {max_bytes} bytes of JSON")
    return value


def check_time(name: str, value: object) -> float:
    """A point in time an operator gave, as unix seconds: a number (or its text) of unix
    seconds, or ISO 8601 text (``2026-12-01``, ``2026-12-01T18:00:00Z``,
    ``2026-12-01T20:00:00+02:00``; without an offset it is UTC). The API, the CLI and the
    dashboard read every ``since`` and ``until`` with this."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = datetime.fromisoformat(value.strip())
            except ValueError:
                raise InvalidInput(
                    f"{name} must be unix seconds or ISO 8601 (2026-12-01T10:00:00Z), "
                    f"not {value[:40]!r}"
                ) from None
            seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    else:
        raise InvalidInput(f"{name} must be unix seconds or ISO 8601 (2026-12-01T10:00:00Z)")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"{name} must be a time after 1970")
    return seconds

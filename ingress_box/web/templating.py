"""The dashboard's Jinja2 environment: package templates, autoescaping, and display filters."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def when(ts: float | None) -> str:
    """A Unix time as UTC wall-clock text (the box's clock may run in any zone)."""
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def age(seconds: float | None) -> str:
    """A duration as one rounded unit: what a glance needs."""
    if seconds is None:
        return "—"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def pretty_json(text: str | None, limit: int) -> str | None:
    """The body re-indented for reading when it is a whole JSON document, else None."""
    if not text or len(text) >= limit:
        return None
    try:
        pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # thousands of nested "[" recurse past the stack
        return None
    # Indenting grows with depth: a deep document would make a page of mostly spaces.
    return pretty if len(pretty) <= 4 * limit else None


def environment(globals_: Mapping[str, Any]) -> jinja2.Environment:
    # Strict: a misspelt variable fails the page (and its test) instead of rendering as blank.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(when=when, age=age)
    env.globals.update(globals_)
    return env

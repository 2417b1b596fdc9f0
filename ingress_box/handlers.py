"""Handlers by name: the built-in ones, those plugins register, and ``package.module:function``."""

from __future__ import annotations

import importlib
from typing import Any

from .bridge.handler import bridge
from .delivery import Handler
from .forward import forward

_HANDLERS: dict[str, Handler] = {"forward": forward, "bridge": bridge}


def register_handler(name: str, handler: Handler) -> None:
    """Make ``handler`` resolvable as ``name`` (a later registration of the same name wins)."""
    if not name or ":" in name:
        raise ValueError(f"handler name {name!r} must be non-empty and contain no ':'")
    _HANDLERS[name] = handler


def registered() -> frozenset[str]:
    """The names registered now (the built-ins and what plugin code registered)."""
    return frozenset(_HANDLERS)


def resolve_handler(name: str) -> Handler:
    """A registered handler, or ``package.module:function`` imported now; LookupError if neither."""
    if name in _HANDLERS:
        return _HANDLERS[name]
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise LookupError(f"unknown handler {name!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"cannot load handler {name!r}: {exc}") from exc
    if not callable(target):  # still a lookup error: the name does not name a handler
        raise LookupError(f"handler {name!r} is not callable")  # noqa: TRY004
    handler: Handler = target
    return handler

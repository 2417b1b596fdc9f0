"""The handler API: what a handler receives and how it says how an attempt ended.

A handler gets an :class:`Event` and a :class:`HandlerContext`; it returns to say "delivered",
raises :class:`~ingress_box.errors.RetryLater` for a transient failure or
:class:`~ingress_box.errors.PermanentFailure` to dead-letter now. A handler that calls a target
reports its answer with :meth:`HandlerContext.answered`, so the attempt log shows it. The
built-in handler is :func:`ingress_box.forward.forward`; :mod:`ingress_box.handlers` finds a
handler by name and :mod:`ingress_box.retry` decides what happens next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .event import Event as Event  # re-exported: the record a handler receives
from .outbound import Pool

if TYPE_CHECKING:  # only a type here: mapping_rules builds on the store, not the other way round
    from .mapping_rules import MappingAccess
    from .store import Database

ERROR_EXCERPT_CHARS = 200  # how much of an error's text an attempt records
RESPONSE_EXCERPT_BYTES = 1024  # how much of a target's answer an attempt records


@dataclass(frozen=True)
class Answer:
    """What the target answered to an attempt: its status and the start of its body, as text."""

    status: int
    excerpt: str


@dataclass(frozen=True)
class Target:
    url: str | None
    outbound_secret: str = field(repr=False)
    config: Mapping[str, Any] = field(repr=False)  # may hold credentials (extra headers)


@dataclass
class HandlerContext:
    target: Target
    client: httpx.Client
    timeout: float
    now: Callable[[], float]
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    # The event's plugin instance's conversation mappings, to read and write (None in tests
    # that build a context by hand).
    mappings: MappingAccess | None = None
    # forward's lean client (kept-alive connections shared by the worker's threads); the
    # httpx client above is for other handlers. None: forward opens a connection per request.
    outbound: Pool | None = None
    # The box's database, for handlers that keep state of their own (the bridge); None in tests
    # that build a context by hand.
    db: Database | None = None
    # The most bytes a handler should fetch from elsewhere in one go (the box's body cap).
    max_body_bytes: int = 262_144
    # Set by a handler that returns without doing anything (a skipped event): recorded as the
    # attempt's error text, next to its "delivered" outcome, so an operator can see why.
    note: str | None = None
    # What the target answered, once a handler reports it (:meth:`answered`); the attempt
    # records it, whether the answer counts as delivered or not.
    answer: Answer | None = None

    def answered(self, status: int, body: bytes) -> None:
        """Report the target's answer; only its first :data:`RESPONSE_EXCERPT_BYTES` are kept."""
        # Cut as bytes first: decoding 64 KiB to keep 1 KiB would be waste on the hot path.
        excerpt = body[:RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace")
        self.answer = Answer(status, excerpt)


class Handler(Protocol):
    def __call__(self, event: Event, ctx: HandlerContext) -> None: ...

"""The one record of an accepted delivery that a handler receives for an attempt.

It sits below the store so that a claim (:class:`ingress_box.store.deliveries.Claimed`) carries
this very record rather than a field-by-field copy of it; handlers import it from
:mod:`ingress_box.delivery`, the handler API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    id: str
    plugin: str
    instance: str
    route: str
    provider_delivery_id: str
    conversation: str | None
    method: str
    subpath: str
    content_type: str | None
    headers: Mapping[str, str]
    body: bytes
    attempt: int  # of the retry budget: 1 for the first attempt; a redrive or replay starts again
    received_at: float

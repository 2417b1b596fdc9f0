"""The test event: a synthetic delivery that checks an instance's target end to end.

It is a real delivery (listed with the others, sent through the outbox, retried by the retry
policy like any) on the reserved route :data:`TEST_ROUTE`, which no provider request can reach:
manifest route names start with a letter or a digit. ``forward`` marks what it sends on that
route with ``ingress-box-test: 1``, so a provider can never make the box send that header. It
has no conversation, so it neither waits behind a lane of real traffic nor holds a strict one.

The caller waits, bounded, for the first attempt's outcome by reading the database, which works
whether the worker runs in this process or in another one on the same file.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from . import instance_health
from .config import Settings
from .errors import NoTarget
from .extract import webhook_id
from .store import Database
from .store import probes as store_probes
from .store.deliveries import Attempt, NewDelivery
from .store.instances import Instance

TEST_ROUTE = "@test"
TEST_HEADER = "ingress-box-test"
POLL_SECONDS = 0.05  # how often the database is read for the outcome while waiting
WAIT_MARGIN_SECONDS = 2.0  # waited beyond the delivery timeout: the claim and the commit


def new_event(inst: Instance, now: float) -> NewDelivery:
    """The test event for ``inst``; refused (:class:`NoTarget`) when it could not be sent."""
    found = instance_health.problems(inst)
    if found:
        raise NoTarget(f"{inst.plugin_id}/{inst.instance_id} cannot be tested: {found[0]}")
    provider_id = "test_" + secrets.token_hex(12)
    sent_at = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    body = {
        "ingress_box_test": True,
        "sent_at": sent_at,
        "plugin": inst.plugin_id,
        "instance": inst.instance_id,
    }
    return NewDelivery(
        id=webhook_id(inst.plugin_id, inst.instance_id, provider_id),
        plugin_id=inst.plugin_id,
        instance_id=inst.instance_id,
        route=TEST_ROUTE,
        provider_delivery_id=provider_id,
        conversation=None,
        method="POST",
        subpath="",
        content_type="application/json",
        headers="{}",
        body=json.dumps(body).encode(),
        received_at=now,
    )


def wait_seconds(settings: Settings) -> float:
    """How long a caller waits for the first attempt before answering without it."""
    return settings.delivery_timeout_seconds + WAIT_MARGIN_SECONDS


async def await_first_attempt(db: Database, delivery_id: str, within: float) -> Attempt | None:
    deadline = time.monotonic() + within
    while True:
        found = await store_probes.afirst_attempt(db, delivery_id)
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(POLL_SECONDS)


def wait_first_attempt(db: Database, delivery_id: str, within: float) -> Attempt | None:
    deadline = time.monotonic() + within
    while True:
        found = store_probes.first_attempt(db, delivery_id)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(POLL_SECONDS)


def result_json(delivery_id: str, attempt: Attempt | None) -> dict[str, Any]:
    """What the API and the CLI answer; ``outcome`` is None while the attempt is still out."""
    return {
        "delivery": delivery_id,
        "outcome": attempt.outcome if attempt else None,
        "status_code": attempt.status_code if attempt else None,
        "error": attempt.error if attempt else None,
        "duration_ms": attempt.duration_ms if attempt else None,
    }

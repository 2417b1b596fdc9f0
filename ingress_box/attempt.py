"""One delivery attempt: find the handler, run it with its context, classify how it ended.

:class:`Attempts` is what a worker thread calls for each claimed outbox row. It never raises:
every failure, ours or the handler's, becomes a :class:`~ingress_box.retry.Decision` and an
:class:`~ingress_box.store.deliveries.Outcome` for the worker to record.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable

import httpx

from . import handlers, mapping_rules
from .config import Settings
from .delivery import HandlerContext, Target
from .errors import PermanentFailure
from .outbound import Pool
from .retry import Decision, RetryPolicy, decide
from .store import Database
from .store import instances as store_instances
from .store import outbox as store_outbox


class Attempts:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        instances: store_instances.InstanceCache,
        client: httpx.Client,
        outbound: Pool,
        *,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self.db = db
        self.instances = instances
        self.client = client
        self.outbound = outbound
        self.clock = clock
        self.rng = rng
        self.policy = RetryPolicy.from_settings(settings)

    def make(
        self, row: store_outbox.Claimed, owner: str
    ) -> tuple[store_outbox.Outcome, Decision, float]:
        """Attempt ``row`` now: its outcome to record, the decision, and the seconds it took."""
        event = row.event
        started, t0 = self.clock(), time.perf_counter()
        error: BaseException | None = None
        instance = None
        ctx: HandlerContext | None = None
        try:
            instance = self.instances.get(event.plugin, event.instance)
            if instance is None:
                raise PermanentFailure("instance no longer exists")
            handler = handlers.resolve_handler(instance.handler)
            # Read at delivery time, so a mapping made after the event was accepted still counts.
            mappings = mapping_rules.MappingAccess(
                self.db, event.plugin, event.instance, event.conversation, self.clock
            )
            ctx = HandlerContext(
                target=Target(instance.target_url, instance.outbound_secret, instance.config),
                client=self.client,
                timeout=self.settings.delivery_timeout_seconds,
                now=self.clock,
                extra_headers=mapping_rules.enrichment_headers(mappings.get()),
                mappings=mappings,
                outbound=self.outbound,
                db=self.db,
                max_body_bytes=self.settings.max_body_bytes,
            )
            handler(event, ctx)
        except Exception as exc:  # noqa: BLE001 (every failure is classified by the policy)
            error = exc
        duration = time.perf_counter() - t0
        decision = decide(self.policy, event.attempt, error, self.rng)
        answer = ctx.answer if ctx is not None else None
        outcome = store_outbox.Outcome(
            seq=row.seq,
            owner=owner,
            outcome=decision.outcome,
            started_at=started,
            duration_ms=duration * 1000,
            status_code=answer.status if answer is not None else decision.status_code,
            error=decision.error if error is not None or ctx is None else ctx.note,
            response=answer.excerpt if answer is not None else None,
            next_attempt_at=self.clock() + decision.delay,
            dead_letter_id="dlq_" + uuid.uuid4().hex[:24],
            strict=instance is not None and instance.lane_policy == "strict",
        )
        return outcome, decision, duration

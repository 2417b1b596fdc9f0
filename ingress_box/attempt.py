"""One delivery attempt: find the handler, run it with its context, classify how it ended.

:class:`Attempts` is what a worker thread calls for each claimed outbox row (and serve's event
loop for a row of a ``forward`` instance, :meth:`Attempts.forward_on_loop`). It never raises:
every failure, ours or the handler's, becomes a :class:`~ingress_box.retry.Decision` and an
:class:`~ingress_box.store.deliveries.Outcome` for the worker to record.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from . import handlers, mapping_rules
from .config import Settings
from .delivery import Handler, HandlerContext, Target
from .errors import PermanentFailure, Waiting
from .forward import forward, forward_on_loop
from .outbound import LoopPool, Pool
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
        attempt = _Attempt(row, self.clock())
        try:
            handler, ctx = self._prepare(attempt)
            handler(row.event, ctx)
        except Exception as exc:  # noqa: BLE001 (every failure is classified by the policy)
            attempt.error = exc
        return self._conclude(attempt, owner)

    async def forward_on_loop(
        self, row: store_outbox.Claimed, owner: str, pool: LoopPool
    ) -> tuple[store_outbox.Outcome, Decision, float] | None:
        """:meth:`make` for a row of a ``forward`` instance, awaited on the running event loop;
        None (nothing attempted) when the instance no longer forwards."""
        attempt = _Attempt(row, self.clock())
        try:
            handler, ctx = self._prepare(attempt)
            if handler is not forward:
                return None
            await forward_on_loop(row.event, ctx, pool)
        except Exception as exc:  # noqa: BLE001 (every failure is classified by the policy)
            attempt.error = exc
        return self._conclude(attempt, owner)

    def _prepare(self, attempt: _Attempt) -> tuple[Handler, HandlerContext]:
        """The instance's handler and the context it runs with (kept on ``attempt``)."""
        event = attempt.row.event
        attempt.instance = instance = self.instances.get(event.plugin, event.instance)
        if instance is None:
            raise PermanentFailure("instance no longer exists")
        handler = handlers.resolve_handler(instance.handler)
        # Read at delivery time, so a mapping made after the event was accepted still counts.
        mappings = mapping_rules.MappingAccess(
            self.db, event.plugin, event.instance, event.conversation, self.clock
        )
        attempt.ctx = ctx = HandlerContext(
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
        return handler, ctx

    def _conclude(
        self, attempt: _Attempt, owner: str
    ) -> tuple[store_outbox.Outcome, Decision, float]:
        """How the attempt ended, as the policy decides."""
        duration = time.perf_counter() - attempt.t0
        error, ctx, instance = attempt.error, attempt.ctx, attempt.instance
        decision = decide(self.policy, attempt.row.event.attempt, error, self.rng)
        answer = ctx.answer if ctx is not None else None
        outcome = store_outbox.Outcome(
            seq=attempt.row.seq,
            owner=owner,
            outcome=decision.outcome,
            started_at=attempt.started,
            duration_ms=duration * 1000,
            status_code=answer.status if answer is not None else decision.status_code,
            error=decision.error if error is not None or ctx is None else ctx.note,
            response=answer.excerpt if answer is not None else None,
            next_attempt_at=self.clock() + decision.delay,
            # uuid4 reads the kernel's random source: only for the outcome that needs one
            dead_letter_id="dlq_" + uuid.uuid4().hex[:24] if decision.outcome == "dead" else "",
            strict=instance is not None and instance.lane_policy == "strict",
            waited=decision.outcome == "retry" and isinstance(error, Waiting),
        )
        return outcome, decision, duration


@dataclass
class _Attempt:
    """What one attempt learned so far."""

    row: store_outbox.Claimed
    started: float  # the clock's time
    t0: float = field(default_factory=time.perf_counter)
    instance: store_instances.Instance | None = None
    ctx: HandlerContext | None = None
    error: BaseException | None = None

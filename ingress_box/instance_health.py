"""An instance's health: one state a person can act on, and the figures behind it.

The state is the first of these that applies:

- ``disabled``: the instance is disabled (its ingress URL refuses webhooks).
- ``failing``: it cannot deliver now. Either it has a problem that no retry fixes (listed in
  ``problems``; today one: ``"no target_url"``, a ``forward`` instance with nowhere to send),
  or the last attempt at its target failed: ``consecutive_failures`` (attempts that ended
  ``retry`` or ``dead`` since the last success) is 1 or more. A dead letter only ever opens on
  a failed attempt, so one opened since the last success also reads ``failing``; the first
  success turns the state back.
- ``idle``: nothing waits and no attempt ended in the last :data:`IDLE_HOURS` hours (or ever).
- ``ok``: otherwise: the last attempt succeeded, or the first one is still to come.

``reason`` says why in a few words (None when ``ok``). Alerts are deliberately less jumpy than
the state: ``instance.failing`` waits for ``INGRESS_BOX_ALERT_AFTER_FAILURES`` failures in a row
or a dead letter (see :mod:`ingress_box.alerts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .store import Database
from .store import health as store_health
from .store.instances import Instance

IDLE_HOURS = 24


@dataclass(frozen=True)
class Health:
    state: str
    reason: str | None
    problems: list[str]
    record: store_health.Record

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "state": self.state,
            "reason": self.reason,
            "problems": self.problems,
            "last_success_at": r.last_success_at,
            "last_failure_at": r.last_failure_at,
            "failing_since": r.failing_since,
            "consecutive_failures": r.consecutive_failures,
            "last_error": r.last_error,
            "pending": r.pending,
            "dead_letters_open": r.dead_letters_open,
        }


def problems(inst: Instance) -> list[str]:
    """What keeps the instance from delivering whatever its target does."""
    if inst.handler == "forward" and not (inst.target_url or "").strip():
        return ["no target_url"]
    return []


def failures(record: store_health.Record) -> str:
    """The run of failures in words, with the last error."""
    n = record.consecutive_failures
    text = "the last attempt failed" if n == 1 else f"the last {n} attempts failed"
    return f"{text}: {record.last_error}" if record.last_error else text


def health(inst: Instance, record: store_health.Record, now: float) -> Health:
    """The state of ``inst`` given its store record, at ``now``."""
    found = problems(inst)
    if not inst.enabled:
        return Health("disabled", "its ingress refuses webhooks until it is enabled", found, record)
    if found:
        return Health("failing", ", ".join(found), found, record)
    if record.consecutive_failures:
        return Health("failing", failures(record), found, record)
    last = record.last_attempt_at
    if record.pending == 0 and (last is None or now - last > IDLE_HOURS * 3600):
        reason = "no attempt yet" if last is None else f"no attempt in {IDLE_HOURS} h"
        return Health("idle", reason, found, record)
    return Health("ok", None, found, record)


def _keys(instances: Iterable[Instance]) -> list[store_health.Key]:
    return [(i.plugin_id, i.instance_id) for i in instances]


def of(db: Database, instances: list[Instance], now: float) -> dict[store_health.Key, Health]:
    """The health of each of ``instances`` (one query for all of them)."""
    records = store_health.read(db, _keys(instances))
    return {k: health(i, records[k], now) for k, i in zip(_keys(instances), instances, strict=True)}


async def aof(
    db: Database, instances: list[Instance], now: float
) -> dict[store_health.Key, Health]:
    records = await store_health.aread(db, _keys(instances))
    return {k: health(i, records[k], now) for k, i in zip(_keys(instances), instances, strict=True)}


def with_health(inst: Instance, found: Health) -> dict[str, Any]:
    """The instance's public JSON with its ``health``."""
    return {**inst.to_json(), "health": found.to_json()}

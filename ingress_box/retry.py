"""Retry policy as data plus one formula (after hynek/stamina).

:func:`decide` turns how an attempt ended into a :class:`Decision` for the worker. It is pure
(the randomness is injected) so it is tested without waiting.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from .config import Settings
from .delivery import ERROR_EXCERPT_CHARS
from .errors import DeliveryError, PermanentFailure, RetryLater, Waiting


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = Settings.retry_max_attempts
    base_seconds: float = Settings.retry_base_seconds
    max_seconds: float = Settings.retry_max_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
        )


@dataclass(frozen=True)
class Decision:
    outcome: Literal["delivered", "retry", "dead"]
    delay: float
    error: str | None
    status_code: int | None


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), with full jitter.

    ``rng.uniform(0, min(max_seconds, base_seconds * 2 ** (attempt - 1)))``: the ceiling doubles
    per attempt up to ``max_seconds`` and the wait is uniform below it ("full jitter", as in AWS's
    "Exponential Backoff And Jitter" and hynek/stamina), so retries of many deliveries that failed
    together spread out instead of hitting a recovering target at the same instant.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # Capping the exponent keeps the float finite for absurd attempt numbers.
    ceiling = min(policy.max_seconds, policy.base_seconds * 2.0 ** min(attempt - 1, 1000))
    return rng.uniform(0, ceiling)


def decide(
    policy: RetryPolicy, attempt: int, result: BaseException | None, rng: random.Random
) -> Decision:
    """What to do after attempt number ``attempt`` ended with ``result`` (None: it succeeded).

    Retry-After (``RetryLater.delay``) is a floor under the jittered backoff, itself capped by
    ``max_seconds`` so a target cannot park a delivery for days. Anything that is not a
    PermanentFailure is retried until the attempt budget is spent, then dead-lettered; a
    :class:`~ingress_box.errors.Waiting` (nothing failed: another delivery goes first) is
    always retried.
    """
    if result is None:
        return Decision("delivered", 0.0, None, None)
    status_code = result.status_code if isinstance(result, DeliveryError) else None
    if isinstance(result, PermanentFailure):
        return Decision("dead", 0.0, result.error, status_code)
    if isinstance(result, RetryLater):
        error, floor = result.error, result.delay
    else:
        error, floor = f"{type(result).__name__}: {str(result)[:ERROR_EXCERPT_CHARS]}", None
    if attempt >= policy.max_attempts and not isinstance(result, Waiting):
        return Decision("dead", 0.0, error, status_code)
    delay = backoff(policy, attempt, rng)
    if floor is not None and math.isfinite(floor):
        delay = max(delay, min(floor, policy.max_seconds))
    return Decision("retry", delay, error, status_code)

"""The one way tests wait: poll a condition until it holds, and fail loudly at the deadline.

Standard library only, so the single-file smoke test (which runs outside pytest) can use it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02  # short enough to add little latency, long enough not to hog a shared machine


def eventually(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    what: str = "a condition",
    *,
    interval: float = INTERVAL,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and
    return that (so a predicate can hand back what it found, or None while there is none).

    It is always called at least once, and once more at the deadline, so a slow machine that
    overshoots a poll still gets a last look. An exception from ``predicate`` propagates: a
    condition that cannot be evaluated is a failure, not a "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # truthy, so not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(interval, remaining))

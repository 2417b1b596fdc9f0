"""A token bucket per instance: ``rate`` verified requests per second, bursts up to ``rate``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable


class RateLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: Hashable) -> int:
        """Spend one token; 0 when allowed, else the whole seconds to wait (Retry-After)."""
        if self.rate <= 0:
            return 0
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))

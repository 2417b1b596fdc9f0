"""The admin token: configured, or generated once and kept only as a hash; and the throttle on
guessing it.

When no token is configured, the first start generates one, stores its SHA-256 in the database
and hands the plain token back exactly once so that ``serve`` can print it.

Every door that takes the token (the admin API, the dashboard's login, ``/metrics``) asks
:meth:`AdminAuth.attempt`, which spends one of a client address's few tries on each wrong token
and logs it; once they are spent the client is refused (429, ``Retry-After``) without its token
being looked at, until a try comes back. Right tokens spend nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from ..config import Secret
from ..store import Database, meta

log = logging.getLogger("ingress_box.web")

FAILURE_BURST = 5  # wrong tokens an address may send back to back (a typo, a stale script)
FAILURE_REFILL_SECONDS = 2.0  # then one more try per this many seconds: 1,800 guesses an hour
MAX_CLIENTS = 4096  # addresses remembered; the one unseen longest is forgotten first


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_key(host: str | None) -> str:
    """Whose budget a request spends: its address, or for IPv6 its /64 (one site has a /64 and
    could otherwise try from a fresh address each time)."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Throttle:
    """A token bucket of wrong tries per client: ``burst`` at once, then one per ``refill``
    seconds. Memory is bounded by ``max_clients``; a full bucket is not kept at all."""

    def __init__(
        self,
        burst: int = FAILURE_BURST,
        refill_seconds: float = FAILURE_REFILL_SECONDS,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.burst = float(burst)
        self.refill_seconds = refill_seconds
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (tries, at)

    def _tries(self, key: str, now: float) -> float:
        tries, at = self._buckets.get(key, (self.burst, now))
        # max(): a clock set back must not take tries away for ever
        return min(self.burst, tries + max(0.0, now - at) / self.refill_seconds)

    def wait(self, key: str, now: float) -> int:
        """0 when ``key`` may try a token now, else the whole seconds until it may."""
        tries = self._tries(key, now)
        if tries >= self.burst:
            self._buckets.pop(key, None)  # all tries back: nothing to remember
        if tries >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - tries) * self.refill_seconds))

    def spend(self, key: str, now: float) -> None:
        """One wrong try of ``key``."""
        self._buckets[key] = (max(0.0, self._tries(key, now) - 1.0), now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


@dataclass(frozen=True)
class Verdict:
    """The answer to one presented token: ``ok``, else refused (401), or with ``retry_after``
    set, throttled (429) without the token having been compared."""

    ok: bool
    retry_after: int = 0


class AdminAuth:
    def __init__(self, token_sha256: str, throttle: Throttle | None = None) -> None:
        self._expected = token_sha256.encode()
        self.throttle = throttle or Throttle()

    def check(self, authorization: str | None) -> bool:
        """True when the header is ``Bearer <the token>`` (constant-time)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(_digest(token.strip()).encode(), self._expected)

    def attempt(
        self, authorization: str | None, client: str | None, now: float, door: str
    ) -> Verdict:
        """Check the header of a request from ``client`` (its address) at ``door`` (for the
        log), spending and logging a try when the token is wrong."""
        key = client_key(client)
        wait = self.throttle.wait(key, now)
        if wait:
            return Verdict(False, wait)
        if self.check(authorization):
            return Verdict(True)
        _, _, token = (authorization or "").partition(" ")
        if token.strip():  # no token at all is no guess (a browser, a probe): nothing to count
            self.throttle.spend(key, now)
            log.warning("admin token refused", extra={"fields": {"client": client, "door": door}})
        return Verdict(False)


def ensure_admin_token(db: Database, configured: Secret | None) -> tuple[AdminAuth, str | None]:
    """The verifier, and the new plain token when one was generated now (else None)."""
    if configured:
        return AdminAuth(_digest(str(configured))), None
    fresh = "ibx_" + secrets.token_urlsafe(32)
    stored = db.write(meta.put_once(meta.ADMIN_TOKEN_KEY, _digest(fresh)))
    return AdminAuth(stored), fresh if stored == _digest(fresh) else None


def reset_admin_token(db: Database) -> str:
    """Replace the stored token with a new one and return it (the CLI prints it)."""
    fresh = "ibx_" + secrets.token_urlsafe(32)
    db.write(meta.put(meta.ADMIN_TOKEN_KEY, _digest(fresh)))
    return fresh

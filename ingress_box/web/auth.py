"""The admin token: configured, or generated once and kept only as a hash.

When no token is configured, the first start generates one, stores its SHA-256 in the database
and hands the plain token back exactly once so that ``serve`` can print it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..config import Secret
from ..store import Database, meta


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminAuth:
    def __init__(self, token_sha256: str) -> None:
        self._expected = token_sha256.encode()

    def check(self, authorization: str | None) -> bool:
        """True when the header is ``Bearer <the token>`` (constant-time)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(_digest(token.strip()).encode(), self._expected)


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

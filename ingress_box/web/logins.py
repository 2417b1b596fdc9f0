"""Dashboard logins: random session ids kept in this process's memory, each with its CSRF token.

The cookie carries only the session id; the server keeps its SHA-256, so the table holds nothing
a reader could replay. Sessions end on logout, after ``IDLE_SECONDS`` unused or
``MAX_AGE_SECONDS`` in all; a restart logs everyone out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

IDLE_SECONDS = 12 * 3600.0
MAX_AGE_SECONDS = 7 * 86_400.0
MAX_SESSIONS = 256  # a bound on memory: the least recently used session goes first


@dataclass
class Login:
    csrf: str
    created_at: float
    seen_at: float
    flash: str | None = None  # one message for the next page (the outcome of a form)

    def csrf_ok(self, given: str | None) -> bool:
        return hmac.compare_digest((given or "").encode(), self.csrf.encode())

    def take_flash(self) -> str | None:
        message, self.flash = self.flash, None
        return message


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Logins:
    def __init__(self) -> None:
        self._items: OrderedDict[str, Login] = OrderedDict()

    def start(self, now: float) -> tuple[str, Login]:
        """A new session: its id (for the cookie only) and its state."""
        session_id = secrets.token_urlsafe(32)
        login = Login(csrf=secrets.token_urlsafe(32), created_at=now, seen_at=now)
        self._items[_key(session_id)] = login
        while len(self._items) > MAX_SESSIONS:
            self._items.popitem(last=False)
        return session_id, login

    def get(self, session_id: str | None, now: float) -> Login | None:
        """The live session with this id (touching it), else None."""
        if not session_id:
            return None
        key = _key(session_id)
        login = self._items.get(key)
        if login is None:
            return None
        if now - login.seen_at > IDLE_SECONDS or now - login.created_at > MAX_AGE_SECONDS:
            del self._items[key]
            return None
        login.seen_at = now
        self._items.move_to_end(key)
        return login

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._items.pop(_key(session_id), None)

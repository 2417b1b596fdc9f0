"""What every verification scheme shares: the request and verdict types, the spec protocol,
typed reads from a manifest table, and the byte-level helpers the verifiers agree on.

Header values are expected as ASGI servers decode them (latin-1), so encoding them back to
latin-1 recovers the bytes the provider signed; values latin-1 cannot hold fall back to UTF-8.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ManifestError

DEFAULT_TOLERANCE_SECONDS = 300
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # ASCII digits only: int() would also take "1_0" and " 1"


@dataclass(frozen=True)
class SignedRequest:
    """What a verifier may look at: the request exactly as the provider sent it."""

    method: str
    url: str  # the public URL the provider called, query string included (Twilio signs it)
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


@dataclass(frozen=True)
class Verdict:
    """The outcome; ``reason`` is short and machine-readable ("ok", "bad_signature", ...)."""

    ok: bool
    reason: str


OK = Verdict(True, "ok")


def fail(reason: str) -> Verdict:
    return Verdict(False, reason)


class VerifySpec(Protocol):
    """One scheme's parameters; each scheme has its own frozen dataclass."""

    @property
    def scheme(self) -> str: ...

    @property
    def secret_kind(self) -> str: ...  # "whsec" (Standard Webhooks key) or "text"


class ManifestTable:
    """Typed reads from one manifest table; each error names the file and the dotted field."""

    def __init__(self, data: object, file: str, field: str) -> None:
        if not isinstance(data, Mapping):
            raise ManifestError(file, field or "(document)", "must be a table")
        self.data: Mapping[str, Any] = data
        self.file = file
        self.field = field

    def path(self, key: str) -> str:
        return f"{self.field}.{key}" if self.field else key

    def error(self, key: str, problem: str) -> ManifestError:
        return ManifestError(self.file, self.path(key), problem)

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(str(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def _typed(self, key: str, kind: type, what: str, required: bool) -> Any:
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return None
        value = self.data[key]
        # bool is an int subclass: `tolerance_seconds = true` must not read as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be {what}, not {type(value).__name__}")
        return value

    def text(self, key: str) -> str | None:
        value: str | None = self._typed(key, str, "a string", False)
        return value

    def required_text(self, key: str) -> str:
        value: str = self._typed(key, str, "a string", True)
        return value

    def integer(self, key: str, minimum: int) -> int | None:
        value: int | None = self._typed(key, int, "an integer", False)
        if value is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}")
        return value

    def flag(self, key: str) -> bool | None:
        value: bool | None = self._typed(key, bool, "true or false", False)
        return value

    def choice(self, key: str, options: Sequence[str], default: str) -> str:
        value = self.text(key)
        if value is not None and value not in options:
            raise self.error(key, f"must be one of {', '.join(options)}")
        return default if value is None else value

    def header(self, key: str) -> str | None:
        """A header name, lower-cased as the request headers are."""
        return None if key not in self.data else self.required_header(key)

    def required_header(self, key: str) -> str:
        value = self.required_text(key)
        if not _HEADER_NAME.fullmatch(value):
            raise self.error(key, f"{value!r} is not a valid header name")
        return value.lower()

    def texts(self, key: str) -> tuple[str, ...]:
        values = self._typed(key, list, "a list of strings", False) or []
        if not all(isinstance(v, str) for v in values):
            raise self.error(key, "must be a list of strings")
        return tuple(values)


def header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def read_timestamp(value: str | None) -> int | str:
    """The integer timestamp, or the failure reason."""
    if not value:
        return "missing_timestamp"
    return int(value) if _TIMESTAMP.fullmatch(value) else "bad_timestamp"


def fresh(timestamp: int, now: float, tolerance: int) -> bool:
    return abs(now - timestamp) <= tolerance  # written so a NaN clock fails closed


def matches(expected: bytes, candidates: Sequence[bytes]) -> bool:
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)

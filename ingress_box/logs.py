"""Log lines: ``key=value`` text or JSON, with the structured fields a record carries.

Code logs an event name as the message and its fields as ``extra={"fields": {...}}``; the
formatters put them on one line. Fields are ids, statuses and timings: never secrets or bodies.

A failure that repeats (a full disk fails every poll of every worker thread) is logged once with
its traceback, then as one line every :data:`REPEAT_SECONDS` saying how often it happened
meanwhile (:class:`RepeatFilter`), so the log stays readable and the disk is not filled by it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

REPEAT_SECONDS = 10.0

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def escape(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``), so that
    a newline from outside (a path's ``%0A``, a target's error text) cannot forge a log line."""
    if text.isprintable():  # the common case, and fast; the space is printable, so it stays
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c)
    if named is not None:
        return named
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        # The message only (a traceback after it keeps its lines).
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = " ".join(
            f"{escape(str(k))}={escape(str(v))}"
            for k, v in _fields(record).items()
            if v is not None
        )
        return f"{line} {pairs}" if pairs else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class RepeatFilter(logging.Filter):
    """Hold back warnings and errors identical to one let through less than ``every`` seconds
    ago; the next one let through says how many were held back (without a traceback: the
    first had it). Records below WARNING always pass."""

    def __init__(
        self,
        every: float = REPEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 1024,
    ) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self.remember = remember
        # key -> [when one was last let through, how many were held back since]
        self._seen: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.levelno, record.getMessage(), repr(error))
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.every:
                seen[1] += 1
                return False
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        held = int(seen[1]) if seen is not None else 0
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in {self.every:.0f}s)"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def configure(log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RepeatFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

"""Log lines: ``key=value`` text or JSON, with the structured fields a record carries.

Code logs an event name as the message and its fields as ``extra={"fields": {...}}``; the
formatters put them on one line. Fields are ids, statuses and timings: never secrets or bodies.

A failure that repeats (a full disk fails every poll of every worker thread) is logged once with
its traceback, then as one line every :data:`REPEAT_SECONDS` saying how often it happened
meanwhile (:class:`RepeatFilter`), so the log stays readable and the disk is not filled by it.

Lines are cheap because serve logs two per webhook: a line is formatted without logging's
``Formatter`` machinery (the timestamp prefix is built once a second), the handler takes no
lock, and one writer thread writes what gathered in :data:`FLUSH_SECONDS` with one ``write()``
(:class:`BufferedHandler`). Those two lines go through :func:`info`, which, when serve's handler
is the only one they would reach, queues the formatted line without making a ``LogRecord``.
Warnings and errors are written at once, and logging's exit hook flushes the rest, so a normal
stop (SIGTERM) loses no line; a crash loses at most the last :data:`FLUSH_SECONDS` of info
lines.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

REPEAT_SECONDS = 10.0
FLUSH_SECONDS = 0.05  # info lines wait at most this long to be written, together

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _msecs(created: float) -> int:
    """The milliseconds of an epoch time, as ``LogRecord.msecs`` has them."""
    return int((created - int(created)) * 1000)


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
    """``TEXT_FORMAT`` and the ``key=value`` fields, control characters escaped."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        # The message only (a traceback after it keeps its lines).
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            line = super().format(record)  # logging's own way: the traceback keeps its lines
            pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items() if v is not None)
            return f"{line} {escape(pairs)}" if pairs else line
        stamp = self._asctime(record.created, int(record.msecs))
        return self._line(
            stamp, record.levelname, record.name, record.getMessage(), _fields(record)
        )

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line of a record without a traceback (what :func:`info` queues directly)."""
        return self._line(self._asctime(created, _msecs(created)), level, logger, message, fields)

    def _line(
        self, stamp: str, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        line = f"{stamp} {level} {logger}: {message}"
        # Escaping is per character, so one pass over the whole line does it for every part.
        return escape(f"{line} {pairs}" if pairs else line)

    def _asctime(self, created: float, msecs: int) -> str:
        """What ``formatTime`` writes (``2024-01-01 12:00:00,123``), strftime once a second."""
        second = int(created)
        if second != self._second:  # a race only builds the same text twice
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{msecs:03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (epoch seconds, for arithmetic) and ``timestamp``
    (ISO 8601 in UTC, ``2024-01-01T12:00:00.123Z``, for people and log stores)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def _timestamp(self, created: float, msecs: int) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second; a race builds the same text twice
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{msecs:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = self._object(
            record.created,
            int(record.msecs),
            record.levelname,
            record.name,
            record.getMessage(),
            _fields(record),
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line of a record without a traceback (what :func:`info` queues directly)."""
        line = self._object(created, _msecs(created), level, logger, message, fields)
        return json.dumps(line, default=str)

    def _object(
        self,
        created: float,
        msecs: int,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "time": created,
            "timestamp": self._timestamp(created, msecs),
            "level": level.lower(),
            "logger": logger,
            "message": message,
            **fields,
        }


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


class BufferedHandler(logging.Handler):
    """Format in the logging thread, write from one writer thread, at most every
    :data:`FLUSH_SECONDS`, in one ``write()``; warnings and worse are written at once.

    No handler lock: a line is a whole string appended to a deque (atomic), and only the
    writer thread and :meth:`flush` (serialised by ``_writing``) take lines out of it. The
    writer thread starts with the first line and sleeps while nothing is logged.
    """

    def __init__(self, stream: TextIO | None = None, every: float = FLUSH_SECONDS) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._lines: collections.deque[str] = collections.deque()
        self._pending = False  # the writer was asked for a write that has not started yet
        self._wanted = threading.Event()
        self._writing = threading.Lock()
        self._writer: threading.Thread | None = None
        self._start = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # logging's handle() takes the handler lock around emit(): five threads queued on it.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 (logging's contract: report it, never raise)
            self.handleError(record)
            return
        self.queue(line, record.levelno)

    def queue(self, line: str, level: int) -> None:
        """Write ``line`` (formatted, without its newline) with the next batch, or at once if it
        is a warning or worse."""
        self._lines.append(line + "\n")
        if level >= logging.WARNING:
            self.flush()
        elif not self._pending:  # set back to False before the writer takes the lines
            self._pending = True
            self._wake_writer()

    def direct_line(self, logger: logging.Logger, event: str, fields: dict[str, Any]) -> str | None:
        """The line this handler would write for an INFO record ``event`` of ``logger``, made
        without the record; None when the record must go through logging (another handler or
        a filter on its way, a formatter not of this module, a field that cannot be written)."""
        formatter = self.formatter
        if not isinstance(formatter, TextFormatter | JsonFormatter):
            return None
        if not self.only_handler_for(logger):
            return None
        try:
            return formatter.line(time.time(), "INFO", logger.name, event, fields)
        except Exception:  # noqa: BLE001 (logging reports it, through the record)
            return None

    def only_handler_for(self, logger: logging.Logger) -> bool:
        """Whether an INFO record of ``logger`` would reach this handler and no other, with
        nothing on the way to change or drop it: no filter on the logger, no other handler up
        its chain (pytest's ``caplog`` adds one to the root), this handler's filters only
        :class:`RepeatFilter` (which lets INFO through)."""
        if logger.filters or logger.disabled or self.level > logging.INFO:
            return False
        if any(not isinstance(f, RepeatFilter) for f in self.filters):
            return False
        current: logging.Logger | None = logger
        while current is not None:
            if current.handlers:
                return current.handlers == [self] and current is logging.root
            current = current.parent if current.propagate else None
        return False

    def _wake_writer(self) -> None:
        if self._writer is None:
            with self._start:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="ingress-box-log", daemon=True
                    )
                    self._writer.start()
        self._wanted.set()

    def _write_loop(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(self.every)  # gather the lines of this window into one write
            self._wanted.clear()
            self._pending = False
            self.flush()

    def flush(self) -> None:
        """Write every line gathered so far (logging calls it at exit, after the last line)."""
        with self._writing:
            lines = []
            while True:
                try:
                    lines.append(self._lines.popleft())
                except IndexError:
                    break
            if not lines:
                return
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # a closed or full stderr: nothing better to do
                pass


_direct: BufferedHandler | None = None  # serve's handler, set by configure


def info(logger: logging.Logger, event: str, fields: dict[str, Any]) -> None:
    """``logger.info(event, extra={"fields": fields})``, for the lines of every webhook.

    When serve's own handler (:func:`configure`) is the only one the record would reach, the
    line is formatted and queued directly: no ``LogRecord``, no walk of the handlers, no
    filters. Measured in serve under a closed loop, a line through logging costs 11-21 µs of
    CPU; this is most of that cost. Anything else (a test's ``caplog``, a handler an operator's
    code added) gets the record through logging as before."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _direct
    if handler is not None:
        line = handler.direct_line(logger, event, fields)
        if line is not None:
            handler.queue(line, logging.INFO)
            return
    logger.info(event, extra={"fields": fields})


def configure(log_format: str, log_level: str = "info") -> None:
    # What no line of ours shows, and what logging looks up for every record: the caller's
    # file and line (a walk up the stack), the thread and process names (logging's documented
    # optimisations; it halves the cost of a line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    global _direct
    handler = BufferedHandler()
    handler.addFilter(RepeatFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    _direct = handler

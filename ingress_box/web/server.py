"""The HTTP server: uvicorn's configuration, and the protocol that bounds what a client can hold.

The provider endpoint faces the open internet unauthenticated, so the server itself keeps any one
client from taking memory, time or file descriptors from the others (CONTRACT, "Limits at the
edge"). :class:`EdgeProtocol` is uvicorn's httptools protocol (kept: it is much faster than h11)
with three bounds added around its parser callbacks:

- **Header bytes.** The request line and headers of a request may take ``max_header_bytes``.
  The bytes received while the headers are incomplete are counted as they arrive; past the cap
  the client gets a ``431`` and the connection is closed, so at most one read (asyncio reads
  256 KiB at a time) past the cap is ever buffered. A header block that arrived whole in one read
  is measured when it is complete.
- **Read deadlines.** The whole header block must arrive within ``read_timeout_seconds`` of the
  request's first byte (of the connection's opening, for its first request), and the whole body
  within the same time of the end of the headers. Each is a total deadline, not an idle timer,
  so a client trickling a byte every few seconds is cut too. The connection is then closed
  (the application, if it was reading the body, sees a disconnect). No deadline runs while the
  application works on a request. A connection idle between requests is closed by uvicorn's
  keep-alive timer, shortened to the read timeout when that is shorter.
- **Connections.** Past ``max_connections`` open connections a new one is answered ``503`` at
  once and closed, so a flood of idle connections can never use up the file descriptors the
  process needs to answer anyone. uvicorn's own ``limit_concurrency`` does not do this: it counts
  connections only when a request's headers are complete (idle connections never meet it), and
  once met it refuses the requests of connections already open as well.

:func:`connection_cap` raises the soft ``RLIMIT_NOFILE`` at start and lowers the cap when the
limit cannot hold it plus a reserve for the database, huey and outgoing deliveries.

The subclass relies on uvicorn internals (the parser callbacks, ``self.connections``,
``self.cycle``, ``self.timeout_keep_alive``), hence the upper bound on uvicorn in pyproject.toml;
``tests/test_hostile_edge.py`` checks the behaviour against a real ``ingress-box serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..config import Settings, env_name
from ..errors import ConfigError, error_document

log = logging.getLogger("ingress_box.server")

KEEP_ALIVE_SECONDS = 5.0  # uvicorn's default
# File descriptors kept for everything but client connections: the listening socket and stdio,
# SQLite (the writer and each reading thread: the file and its WAL, plus the shared memory),
# huey's storage, and the worker's pool of connections to targets (two per worker).
RESERVED_FDS = 64
RESERVED_FDS_PER_WORKER = 4
FEWEST_CONNECTIONS = 16  # below this the box could not answer a health check and a provider
REFUSAL_LOG_SECONDS = 60.0  # at most one "connection limit reached" line a minute
TIMER_SLACK = 0.001  # uvloop's timers have millisecond resolution


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    read_timeout: float
    max_connections: int


class Refusal:
    """An error answer that closes the connection: written straight to the transport when no
    request cycle exists yet, or run as the request's ASGI app once one does."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.body = json.dumps(error_document(code, message)).encode()
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"connection", b"close"),
        ]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in self.headers)
        self.raw = STATUS_LINE[status] + head + b"\r\n" + self.body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


HEADERS_TOO_LARGE = Refusal(431, "headers_too_large", "the request headers are too large")
TOO_MANY_CONNECTIONS = Refusal(
    503, "too_many_connections", "too many open connections; try again later"
)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header cap, read deadlines and a connection cap;
    a subclass made by :func:`protocol_class` carries the limits. Each override is on the
    path of every request, so each does as little as it can."""

    limits: ClassVar[EdgeLimits]
    _last_refusal_log: ClassVar[float] = -REFUSAL_LOG_SECONDS
    _refused_since_log: ClassVar[int] = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's keep-alive timer, never longer than the read timeout (a float is fine there).
        keep_alive = min(self.timeout_keep_alive, self.limits.read_timeout)
        self.timeout_keep_alive = keep_alive  # type: ignore[assignment]
        self._reading_headers = True  # the next bytes are a request line or headers
        self._header_bytes = 0
        # One timer per connection, moved lazily: arming a deadline only notes when it ends,
        # and a timer that fires early re-arms itself for the deadline in force then. Creating
        # and cancelling two timers per request would cost more than the rest of this class.
        self._deadline: float | None = None  # loop time by which the current read must end
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._note_refusal()
            self._refuse(TOO_MANY_CONNECTIONS)
            return
        self._arm()  # the first request's headers, from the connection's opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            # A request's first byte (or more of its headers): its header deadline runs from
            # the first read that holds any of it.
            self._header_bytes += len(data)
            if self._deadline is None:
                self._arm()
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(HEADERS_TOO_LARGE)

    # -- the parser's callbacks ---------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        # Measured here too: a header block that arrived in one read was never counted above.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._deadline = None
            # uvicorn runs the refusal as this request's app, so its cycle and pipeline stay
            # whole; the answer closes the connection.
            app, self.app = self.app, HEADERS_TOO_LARGE
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            self._deadline = None  # the WebSocket protocol takes the connection over
        else:
            self._arm()  # the body; a request without one completes at once and disarms it

    def on_message_complete(self) -> None:
        self._deadline = None
        self._reading_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    # -- deadlines and refusals ---------------------------------------------------------------

    def _arm(self) -> None:
        self._deadline = self.loop.time() + self.limits.read_timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None:
            return  # disarmed since
        if self._deadline - self.loop.time() > TIMER_SLACK:  # armed again since
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` and close; nothing more of this connection is read."""
        self._refused = True
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(refusal.raw)
            self.transport.close()

    @classmethod
    def _note_refusal(cls) -> None:
        # One line a minute, not one per connection: a flood must not flood the log as well.
        cls._refused_since_log += 1
        now = time.monotonic()
        if now - cls._last_refusal_log >= REFUSAL_LOG_SECONDS:
            log.warning(
                "connection limit reached: refusing new connections",
                extra={
                    "fields": {
                        "max_connections": cls.limits.max_connections,
                        "refused": cls._refused_since_log,
                    }
                },
            )
            cls._last_refusal_log = now
            cls._refused_since_log = 0


def protocol_class(limits: EdgeLimits) -> type[EdgeProtocol]:
    """An :class:`EdgeProtocol` carrying ``limits`` (uvicorn makes protocols from a class)."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits})


# -- file descriptors -------------------------------------------------------------------------


def connection_cap(settings: Settings) -> int:
    """How many client connections this process can hold: ``max_connections``, or fewer (with one
    warning line) when the file-descriptor limit cannot hold them and the reserve.

    Raises the soft ``RLIMIT_NOFILE`` to the hard one first, where the system allows it. A limit
    too low to serve even a few connections is a ConfigError.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = RESERVED_FDS + RESERVED_FDS_PER_WORKER * settings.workers
    wanted = hard if hard != resource.RLIM_INFINITY else settings.max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # the limit stays as it was; the cap below follows it
    if soft == resource.RLIM_INFINITY or soft - reserve >= settings.max_connections:
        return settings.max_connections
    usable = soft - reserve
    if usable < FEWEST_CONNECTIONS:
        raise ConfigError(
            f"the open-files limit ({soft}) leaves {max(usable, 0)} connections after the "
            f"{reserve} the box reserves; raise it (ulimit -n) to at least "
            f"{reserve + FEWEST_CONNECTIONS}"
        )
    log.warning(
        "the open-files limit (%d) holds %d connections, not %s=%d: serving at most %d",
        soft,
        usable,
        env_name("max_connections"),
        settings.max_connections,
        usable,
    )
    return usable


# -- the server -------------------------------------------------------------------------------

TICK_SECONDS = 1.0


class Server(uvicorn.Server):
    """uvicorn's server, waking once a second while it runs instead of ten times.

    uvicorn's main loop sleeps 100 ms at a time to look at its stop flag, and refreshes the
    ``Date`` header every tenth time: ten wake-ups a second of an idle box, about a quarter of
    its idle CPU (README, Performance). This one refreshes the header once a second as uvicorn
    does, and the signal that stops it wakes it at once.
    """

    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header when its counter is a multiple of 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_SECONDS)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)


def server_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for ``ingress-box serve``, with the edge's limits."""
    limits = EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        read_timeout=settings.read_timeout_seconds,
        max_connections=connection_cap(settings),
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits),
        lifespan="on",
        log_level=settings.log_level,
        timeout_keep_alive=int(KEEP_ALIVE_SECONDS),
        timeout_graceful_shutdown=10,
        access_log=False,  # the box logs one structured line per request itself
        # With JSON logs, uvicorn's own lines go through our handler too.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
    )

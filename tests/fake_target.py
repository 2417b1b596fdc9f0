"""The one fake forward target: a real HTTP/1.1 server on 127.0.0.1 that records every request
and answers what the test tells it (a sequence of statuses, a delay, Retry-After, or a function
of the request).

Standard library only, so the single-file smoke test (which runs outside pytest) can use it too.

    with running_target() as target:
        target.reply(503, Reply(429, retry_after=1))  # then 200 for every later request
        ...
        first, second, third = target.wait_for(3)
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from waiting import eventually


@dataclass(frozen=True)
class Reply:
    """One answer of the target."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering (cut short when the target stops)
    retry_after: int | str | None = None  # sent as the Retry-After header: seconds or a date
    # Announce more than is sent, then stall: shows whether the client stops reading on its own.
    declared_length: int | None = None
    # Seconds between bytes: the whole answer (status line, headers, body) sent one byte at a
    # time, as a target does that keeps every single read of the client short.
    trickle: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names, values decoded as UTF-8 (else replaced)
    body: bytes
    at: float  # time.time() when the request was read
    raw_headers: dict[str, bytes] = field(default_factory=dict)  # the bytes on the wire


Answer = Callable[[Received], Reply]


class FakeTarget:
    """What a test sees of the running target; every method is safe from any thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.delay = 0.0  # added to every answer's own delay
        self._received: list[Received] = []
        self._queued: list[Reply] = []
        self._then: Reply = Reply()
        self._answer: Answer | None = None
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def reply(self, *replies: Reply | int, then: Reply | int = 200) -> None:
        """Answer the next requests with ``replies`` in turn (a number is a bare status), and
        every request after them with ``then``. Replaces what the target was told before."""
        with self._lock:
            self._queued = [_as_reply(r) for r in replies]
            self._then = _as_reply(then)
            self._answer = None

    def answer_with(self, answer: Answer) -> None:
        """Answer every request with ``answer(request)`` (for answers that depend on it)."""
        with self._lock:
            self._answer = answer

    @property
    def received(self) -> list[Received]:
        """A copy of every request so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Every request so far, once there are at least ``count``."""

        def enough() -> list[Received] | None:
            got = self.received
            return got if len(got) >= count else None

        return eventually(enough, timeout, f"{count} requests at the target")

    def _take(self, got: Received) -> Reply:
        with self._lock:
            self._received.append(got)
            if self._answer is not None:
                answer = self._answer
            elif self._queued:
                return self._queued.pop(0)
            else:
                return self._then
        return answer(got)  # outside the lock: it may read ``received``


def _as_reply(reply: Reply | int) -> Reply:
    return Reply(reply) if isinstance(reply, int) else reply


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real targets do
    timeout = 5  # a stuck keep-alive connection cannot hang teardown
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def do_POST(self) -> None:
        target = self.server.target
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        # http.server decodes header bytes as latin-1; undo it to see the bytes that were sent.
        raw = {k.lower(): v.encode("latin-1") for k, v in self.headers.items()}
        headers = {k: v.decode("utf-8", "replace") for k, v in raw.items()}
        reply = target._take(Received(self.path, headers, body, time.time(), raw))
        if reply.delay or target.delay:
            target.stopping.wait(reply.delay + target.delay)
        if reply.trickle:
            self._trickle(reply)
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.retry_after is not None:
                self.send_header("retry-after", str(reply.retry_after))
            length = len(reply.body) if reply.declared_length is None else reply.declared_length
            self.send_header("content-length", str(length))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:  # the client gave up (a timeout, a killed box): nothing left to answer
            self.close_connection = True
            return
        if reply.declared_length is not None:
            target.stopping.wait(10)
            self.close_connection = True

    def _trickle(self, reply: Reply) -> None:
        head = [f"HTTP/1.1 {reply.status} Trickling", f"content-length: {len(reply.body)}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        answer = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body
        self.close_connection = True
        for i in range(len(answer)):
            if self.server.target.stopping.wait(reply.trickle):
                return
            try:
                self.wfile.write(answer[i : i + 1])
                self.wfile.flush()
            except OSError:  # the client gave up
                return

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    # Non-daemon threads, so server_close() joins them and no socket outlives its test.
    daemon_threads = False

    def __init__(self, target: FakeTarget) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.target = target
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(conn)

    def hang_up(self) -> None:
        """End idle keep-alive connections now, so closing does not wait out their timeout."""
        with self._open_lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that vanishes mid-request (a killed box) is expected in these tests


@contextlib.contextmanager
def running_target() -> Iterator[FakeTarget]:
    """A fresh target on a free port of 127.0.0.1, answering 200 until told otherwise."""
    target = FakeTarget("")
    server = _Server(target)
    target.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.stopping.set()
        server.shutdown()
        server.hang_up()
        server.server_close()
        thread.join()

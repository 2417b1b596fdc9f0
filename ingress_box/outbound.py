"""A lean HTTP/1.1 client for one thing: POST a webhook, within a deadline, on pooled connections.

``forward`` sends thousands of small POSTs to a few targets. A general client (httpx over
httpcore) spends more CPU per request than everything else a delivery does, so this one is only
what a webhook needs: the standard library's connection and response parsing
(:mod:`http.client`), connections kept alive per (scheme, host, port), no redirects, no cookies,
no decoding of the answer.

The deadline covers the whole attempt (connect, TLS, send, status line, headers, body): before
each socket operation the socket's timeout is made to end by the deadline (give or take
:data:`DEADLINE_SLACK`), so a target that trickles one byte a second is cut at the deadline.
Name resolution is the one step outside it.

A kept-alive connection may have been closed by the target while it sat idle. Such a request is
sent again, once, on a fresh connection, but only when the target cannot have processed it: the
send failed, or the reused connection ended before any byte of the answer arrived (the rule of
RFC 9112, 9.3.1, for a connection the server closed). Deliveries are at-least-once anyway, with a
stable ``webhook-id``; this only keeps a routine idle close from costing an attempt.

:class:`Pool` serves threads (blocking sockets); :class:`LoopPool` is the same client on an
asyncio event loop (the in-process worker forwards there: no thread waits on the target, see
:mod:`ingress_box.worker`). Both build the request the same way, parse the answer with the same
functions, and keep the same deadline, reuse and error rules.

Errors, all :class:`OutboundError`:

    OutboundError
    ├── InvalidURL         the URL cannot be sent to (scheme, host, port)
    ├── Timeout            the deadline passed before the status line arrived
    └── ConnectionFailed   refused, reset, unresolvable, TLS refused, not HTTP
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, Protocol, TypeVar, cast
from urllib.parse import quote, urlsplit

DEADLINE_SLACK = 0.05  # how far past the deadline a socket wait may end (see _keep_to_deadline)
KEEPALIVE_SECONDS = 4.0  # under the 5 s idle timeout of common servers, to close first
_UNRESERVED_OR_RESERVED = "/?#[]@!$&'()*+,;=%:-._~"  # kept as is; anything else is escaped


class OutboundError(Exception):
    pass


class InvalidURL(OutboundError):
    pass


class Timeout(OutboundError):
    pass


class ConnectionFailed(OutboundError):
    pass


class _Stale(Exception):
    """A reused connection the target had closed: the request was not processed."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # at most the ``limit`` of the request


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    head: bytes  # the request line and the Host header

    @property
    def key(self) -> tuple[str, str, int]:  # what a kept-alive connection can serve
        return (self.scheme, self.host, self.port)


@lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(str(exc)) from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidURL(f"unsupported scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise InvalidURL("no host")
    default = 443 if parts.scheme == "https" else 80
    port = port or default
    try:
        name = host.encode("ascii").decode()
    except UnicodeEncodeError:  # an internationalised name goes on the wire as its A-label
        name = host.encode("idna").decode()
    name = f"[{name}]" if ":" in name else name
    authority = name if port == default else f"{name}:{port}"
    path = quote(parts.path or "/", safe=_UNRESERVED_OR_RESERVED)
    if parts.query:
        path += "?" + quote(parts.query, safe=_UNRESERVED_OR_RESERVED)
    head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n"
    return _Target(parts.scheme, host, port, head.encode("ascii"))


def _request(target: _Target, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return b"%s%sContent-Length: %d\r\n\r\n%s" % (target.head, lines, len(body), body)


class _Connection:
    """One socket, with the deadline of the request it is serving."""

    def __init__(self, target: _Target, sock: socket.socket) -> None:
        self.key = target.key
        self.sock = sock
        self.deadline = 0.0
        self.received = 0  # bytes of the current answer so far
        self.idle_since = 0.0
        self.fp = io.BufferedReader(_DeadlineReader(self))  # every read keeps to the deadline

    def left(self) -> float:
        return _left(self.deadline)

    def close(self) -> None:
        self.sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        conn = self._conn
        _keep_to_deadline(conn)
        n = conn.sock.recv_into(buffer)
        conn.received += n
        return n


def _keep_to_deadline(conn: _Connection) -> None:
    """Make the socket's next wait end by the deadline (give or take :data:`DEADLINE_SLACK`).

    ``settimeout`` is a system call, and from a thread a hand-off of the GIL, so the timeout
    set for the send is kept for the reads that follow it as long as it still ends within the
    slack of the deadline: a quick answer costs one ``settimeout``, not one per read."""
    left = conn.left()  # raises TimeoutError once none is left
    timeout = conn.sock.gettimeout()
    if timeout is None or timeout < left or timeout > left + DEADLINE_SLACK:
        conn.sock.settimeout(left)


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, the timeout of the next socket operation; none left is a
    timeout."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the delivery deadline passed")
    return left


def _connect(target: _Target, deadline: float, tls: ssl.SSLContext | None) -> _Connection:
    sock = socket.create_connection((target.host, target.port), timeout=_left(deadline))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
            sock.settimeout(_left(deadline))
            sock.do_handshake()  # one timeout for the whole handshake (CPython keeps a deadline)
    except BaseException:
        sock.close()
        raise
    return _Connection(target, sock)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The sockets' and the parser's exceptions, as this module's."""
    try:
        yield
    except TimeoutError as exc:
        raise Timeout("timeout") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ConnectionFailed(str(exc) or type(exc).__name__) from exc


class _Kept(Protocol):
    """What the idle list needs of a connection."""

    key: tuple[str, str, int]
    idle_since: float

    def close(self) -> None: ...


C = TypeVar("C", bound=_Kept)


class _Clients(Generic[C]):
    """What both pools share: the idle connections (at most ``max_idle``, the least recently
    used goes first; the lock guards only this list, never held on the network) and the TLS
    context."""

    def __init__(self, max_idle: int = 8, tls: ssl.SSLContext | None = None) -> None:
        self.max_idle = max_idle
        self._tls = tls
        self._idle: list[C] = []  # oldest first, of every target (a handful)
        self._lock = threading.Lock()

    def _tls_for(self, target: _Target) -> ssl.SSLContext | None:
        if target.scheme != "https":
            return None
        if self._tls is None:  # loading the CA store takes milliseconds: only when needed
            self._tls = ssl.create_default_context()
        return self._tls

    def _usable(self, conn: C) -> bool:
        """Whether an idle connection may serve a request, as far as this pool can tell."""
        return True

    def _take(self, target: _Target) -> C | None:
        key, now = target.key, time.monotonic()
        with self._lock:
            # Newest first: the most recently used is the least likely to have been closed.
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].key == key:
                    conn = self._idle.pop(i)
                    break
            else:
                return None
        if now - conn.idle_since < KEEPALIVE_SECONDS and self._usable(conn):
            return conn
        conn.close()  # older ones of this target are older still; they go when pushed out
        return None

    def _put(self, conn: C) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(conn)
            oldest = self._idle.pop(0) if len(self._idle) > self.max_idle else None
        if oldest is not None:
            oldest.close()

    def idle(self) -> int:
        """How many connections wait for reuse (those known unusable left out)."""
        with self._lock:
            self._idle = [conn for conn in self._idle if self._usable(conn)]
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()


class Pool(_Clients[_Connection]):
    """Kept-alive connections for threads (blocking sockets); safe from any thread."""

    def post(
        self, url: str, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float, limit: int
    ) -> Answer:
        """POST ``body`` to ``url`` and read at most ``limit`` bytes of the answer, all within
        ``timeout`` seconds. Once the status line arrived, a failure reading the body only
        shortens it (the status decided the outcome). ``headers`` go on the wire as given:
        the caller keeps CR and LF out of them."""
        deadline = time.monotonic() + timeout
        target = _target(url)
        request = _request(target, headers, body)
        with _errors():
            conn = self._take(target)
            if conn is not None:
                try:
                    return self._exchange(target, conn, request, deadline, limit, reused=True)
                except _Stale:
                    pass
            conn = _connect(target, deadline, self._tls_for(target))
            return self._exchange(target, conn, request, deadline, limit, reused=False)

    def _exchange(
        self,
        target: _Target,
        conn: _Connection,
        request: bytes,
        deadline: float,
        limit: int,
        *,
        reused: bool,
    ) -> Answer:
        conn.deadline, conn.received = deadline, 0
        keep = False
        try:
            try:
                _keep_to_deadline(conn)
                conn.sock.sendall(request)  # since 3.5 the timeout bounds the whole send
            except TimeoutError:
                raise
            except OSError as exc:
                if reused:
                    raise _Stale from exc
                raise
            try:
                status, headers, framing = _read_head(conn.fp)
            except ConnectionError as exc:  # RemoteDisconnected included
                if reused and conn.received == 0:
                    raise _Stale from exc
                raise
            body, complete = _read_body(conn.fp, framing, limit)
            keep = complete and framing is not None and not _closes(headers)
            return Answer(status, headers, body)
        finally:
            if keep:
                self._put(conn)
            else:
                conn.close()


class _Stream(asyncio.Protocol):
    """One connection of a :class:`LoopPool`: what arrived so far, and whether it ended."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.received = 0  # bytes of the current answer so far
        self.ended = False
        self.idle_since = 0.0
        self._arrived: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        if len(self.buffer) > _MAX_BUFFERED:  # far more than any answer we read: hang up
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def more(self, deadline: float) -> None:
        """Wait until more bytes arrive or the connection ends; TimeoutError at ``deadline``."""
        self._arrived = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(_left(deadline)):
            await self._arrived

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()


class LoopPool(_Clients[_Stream]):
    """:class:`Pool` for coroutines on one event loop: the request waits for the target without
    a thread. Use it from that loop only."""

    def _usable(self, conn: _Stream) -> bool:
        return not conn.ended and not conn.buffer  # closed meanwhile, or sent something unasked

    async def post(
        self,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - as Pool's: it also cuts a body short, not only waits
        limit: int,
    ) -> Answer:
        """As :meth:`Pool.post`."""
        deadline = time.monotonic() + timeout
        target = _target(url)
        request = _request(target, headers, body)
        with _errors():
            conn = self._take(target)
            if conn is not None:
                try:
                    return await self._exchange(conn, request, deadline, limit, reused=True)
                except _Stale:
                    pass
            conn = await self._open(target, deadline)
            return await self._exchange(conn, request, deadline, limit, reused=False)

    async def _open(self, target: _Target, deadline: float) -> _Stream:
        tls = self._tls_for(target)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(_left(deadline)):  # resolving, connecting, the handshake
            _, conn = await loop.create_connection(
                lambda: _Stream(target.key),
                target.host,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
            )
        return conn

    async def _exchange(
        self, conn: _Stream, request: bytes, deadline: float, limit: int, *, reused: bool
    ) -> Answer:
        conn.received = 0
        keep = False
        try:
            if conn.ended or conn.transport is None:  # closed while it sat idle
                raise _Stale if reused else ConnectionResetError("connection closed")
            conn.transport.write(request)
            status, headers, framing = await self._head(conn, deadline, reused=reused)
            body, complete = await _body(conn, framing, limit, deadline)
            keep = complete and framing is not None and not _closes(headers) and not conn.ended
            return Answer(status, headers, body)
        finally:
            if keep:
                self._put(conn)
            else:
                conn.close()

    async def _head(
        self, conn: _Stream, deadline: float, *, reused: bool
    ) -> tuple[int, dict[str, str], int | None]:
        """The final answer's head, parsed by :func:`_read_one_head` once all of it arrived."""
        while True:
            end = _head_end(conn.buffer)
            if end < 0:
                if len(conn.buffer) > _MAX_LINE * 2:
                    raise http.client.HTTPException("answer head too long")
                if conn.ended:
                    if reused and conn.received == 0:
                        raise _Stale
                    _read_one_head(io.BytesIO(bytes(conn.buffer)))  # says what is wrong
                    raise http.client.IncompleteRead(bytes(conn.buffer))
                await conn.more(deadline)
                continue
            status, headers = _read_one_head(io.BytesIO(bytes(conn.buffer[:end])))
            del conn.buffer[:end]
            if not 100 <= status < 200:  # a 1xx is followed by the real answer
                return status, headers, _framing(status, headers)


def _head_end(buffer: bytearray) -> int:
    """Where the first answer head in ``buffer`` ends (after its blank line), or -1."""
    ends = [i + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(blank)) >= 0]
    return min(ends, default=-1)


async def _body(
    conn: _Stream, framing: int | None, limit: int, deadline: float
) -> tuple[bytes, bool]:
    """As :func:`_read_body`, over the bytes as they arrive: parsed again from its start each
    time more comes (what is kept is at most ``limit`` bytes), until it is whole, cut at the
    limit, or the connection ended. The deadline passing only shortens it."""
    while True:
        fp = io.BytesIO(bytes(conn.buffer))
        body, complete = _read_body(fp, framing, limit)
        if framing == _CHUNKED and complete:  # its last line may not have arrived in full yet
            complete = conn.buffer[: fp.tell()].endswith((b"\r\n\r\n", b"\n\n"))
        if complete or len(body) >= limit or conn.ended:
            read = fp.tell()
            del conn.buffer[:read]
            return body, complete and not conn.buffer  # nothing unasked after it
        try:
            await conn.more(deadline)
        except TimeoutError:
            return body, False


# -- reading the answer (RFC 9112) ----------------------------------------------------------------

_MAX_LINE = 65536
_MAX_BUFFERED = 1 << 20  # a LoopPool connection holding more unread bytes is closed
_MAX_HEADERS = 100
_CHUNKED = -1  # framing: a chunked body; None: until the connection ends; n >= 0: n bytes


def _line(fp: io.BufferedIOBase) -> bytes:
    line = fp.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def _read_head(fp: io.BufferedIOBase) -> tuple[int, dict[str, str], int | None]:
    """The status, the headers (lower-case names, repeated ones joined) and the body's framing;
    1xx answers are skipped."""
    while True:
        status, headers = _read_one_head(fp)
        if not 100 <= status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            return status, headers, _framing(status, headers)


def _read_one_head(fp: io.BufferedIOBase) -> tuple[int, dict[str, str]]:
    """One status line and its headers (an HTTP/1.0 answer reads as ``connection: close``)."""
    line = _line(fp)
    if not line:
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if (
        not version.startswith(b"HTTP/1.")
        or not (len(code) == 3 and code.isdigit() and code[:1] != b"0")
        or rest[3:4] not in (b" ", b"\r", b"\n")
    ):
        raise http.client.BadStatusLine(repr(line[:80]))
    headers: dict[str, str] = {}
    name = ""
    for _ in range(_MAX_HEADERS + 1):
        line = _line(fp)
        if line in (b"\r\n", b"\n", b""):
            break
        if line[:1] in (b" ", b"\t") and name:  # obsolete folding: a continuation
            headers[name] += " " + line.strip().decode("latin-1")
            continue
        raw, colon, value = line.partition(b":")
        if not colon:
            raise http.client.HTTPException(f"malformed header line {line[:80]!r}")
        name, text = raw.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    else:
        raise http.client.HTTPException(f"more than {_MAX_HEADERS} headers")
    if version == b"HTTP/1.0":
        headers["connection"] = "close"  # we never ask a 1.0 server to keep it alive
    return int(code), headers


def _framing(status: int, headers: dict[str, str]) -> int | None:
    if status in (204, 304):
        return 0
    if "transfer-encoding" in headers:
        if headers["transfer-encoding"].lower().rsplit(",", 1)[-1].strip() == "chunked":
            return _CHUNKED
        return None  # another coding last: the body runs until the connection ends
    length = headers.get("content-length")
    if length is None:
        return None
    if not length.isdigit():
        raise http.client.HTTPException(f"bad Content-Length {length[:40]!r}")
    return int(length)


def _closes(headers: dict[str, str]) -> bool:
    return "close" in headers.get("connection", "").lower()


def _read_into(fp: io.BufferedIOBase, received: bytearray, size: int) -> bool:
    """Read until ``received`` holds ``size`` bytes: True if it does, False at the end of the
    stream. Read by read1 so that what came before a timeout stays in ``received``."""
    while len(received) < size:
        chunk = fp.read1(size - len(received))
        if not chunk:
            return False
        received += chunk
    return True


def _read_body(fp: io.BufferedIOBase, framing: int | None, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether it was read to its end (so the
    connection can serve another request). Raw bytes, not decoded (we asked for identity):
    nothing can inflate past the limit. A failure here only shortens the excerpt."""
    received = bytearray()
    try:
        if framing is None:
            _read_into(fp, received, limit)
            return bytes(received), False
        if framing != _CHUNKED:
            _read_into(fp, received, min(framing, limit))
            return bytes(received), len(received) == framing
        while True:
            size = int(_line(fp).split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while _line(fp) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return bytes(received), True
            if len(received) + size > limit:
                _read_into(fp, received, limit)
                return bytes(received), False
            whole = _read_into(fp, received, len(received) + size)
            if not whole or _line(fp) not in (b"\r\n", b"\n"):  # the chunk's own CRLF
                return bytes(received), False
    except (OSError, ValueError, http.client.HTTPException):
        return bytes(received), False

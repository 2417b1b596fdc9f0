"""The lean outbound client: connections kept alive and reused, replaced when the target closed
them, dropped when the answer says so; errors as forward maps them. Against a raw HTTP/1.1 server
on 127.0.0.1 that sees every TCP connection. Every test runs twice: on the threads' Pool and on
the event loop's LoopPool (on uvloop, as serve runs it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pytest
import uvloop
from fake_target import FakeTarget, Reply
from waiting import eventually

from ingress_box import outbound
from ingress_box.delivery import Event, HandlerContext, Target
from ingress_box.forward import forward

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEADERS = [(b"content-type", b"application/json")]

# (connection number, request number on it) -> the bytes to answer, and whether to hang up after.
Answer = Callable[[int, int], tuple[bytes, bool]]


@dataclass
class Request:
    connection: int
    head: bytes
    body: bytes


@dataclass
class RawTarget:
    """Counts connections, records requests, answers with what ``answer`` says."""

    answer: Answer
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: set[int] = field(default_factory=set)  # connections that ended (either side)
    sockets: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(5.0)  # a test that forgets a connection cannot hang
        buffer, nth = b"", 0
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                with self.lock:
                    self.requests.append(Request(number, head, body))
                reply, hang_up = self.answer(number, nth)
                nth += 1
                conn.sendall(reply)
                if hang_up:
                    return
        except OSError:
            return
        finally:
            conn.close()
            with self.lock:
                self.closed.add(number)

    def on(self, connection: int) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.connection == connection]


@contextlib.contextmanager
def raw_target(answer: Answer) -> Iterator[RawTarget]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    target = RawTarget(answer, port=listener.getsockname()[1])
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with target.lock:
                number = target.connections
                target.connections += 1
                target.sockets.append(conn)
            thread = threading.Thread(target=target.serve, args=(conn, number))
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield target
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        with target.lock:
            for conn in target.sockets:  # ends idle keep-alive connections now
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=10)


def always(reply: bytes, hang_up: bool = False) -> Answer:
    return lambda connection, nth: (reply, hang_up)


T = TypeVar("T")


class Client(Protocol):
    def post(
        self, url: str, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float, limit: int
    ) -> outbound.Answer: ...

    def idle(self) -> int: ...

    def close(self) -> None: ...


class OnLoop:
    """A LoopPool called from the test's thread: it runs on its own uvloop in a thread."""

    def __init__(self, max_idle: int) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pool = outbound.LoopPool(max_idle=max_idle)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def call() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def post(
        self, url: str, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float, limit: int
    ) -> outbound.Answer:
        answer: outbound.Answer = self._on_loop(self.pool.post, url, headers, body, timeout, limit)
        return answer

    def idle(self) -> int:
        n: int = self._on_loop(self.pool.idle)
        return n

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._on_loop(self.pool.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(params=["threads", "loop"])
def make_pool(request: pytest.FixtureRequest) -> Iterator[Callable[[int], Client]]:
    made: list[Client] = []

    def make(max_idle: int) -> Client:
        client: Client = outbound.Pool(max_idle) if request.param == "threads" else OnLoop(max_idle)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def pool(make_pool: Callable[[int], Client]) -> Client:
    return make_pool(4)


def post(pool: Client, url: str, timeout: float = 5.0) -> outbound.Answer:
    return pool.post(url, HEADERS, b'{"n": 1}', timeout, 1024)


def test_sequential_forwards_share_one_connection(pool: Client) -> None:
    """Three forwards through the worker's pool reach the target over one TCP connection."""
    event = Event(
        id="msg_1",
        plugin="generic",
        instance="main",
        route="events",
        provider_delivery_id="d1",
        conversation=None,
        method="POST",
        subpath="",
        content_type="application/json",
        headers={},
        body=b"{}",
        attempt=1,
        received_at=0.0,
    )
    with raw_target(always(OK)) as target:
        ctx = HandlerContext(
            target=Target(target.url("/hook?a=1"), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", {}),
            client=None,  # type: ignore[arg-type]  # forward never uses the httpx client
            timeout=5.0,
            now=time.time,
            outbound=pool,  # type: ignore[arg-type]  # either client: forward only posts
        )
        for _ in range(3):
            forward(event, ctx)
        assert (target.connections, len(target.on(0)), pool.idle()) == (1, 3, 1)
        head = target.on(0)[0].head
        assert head.startswith(b"POST /hook?a=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % target.port)


def test_a_connection_the_target_closed_while_idle_is_replaced(pool: Client) -> None:
    """The target hangs up after its answer: the next request, sent on the dead connection, is
    sent again on a fresh one and succeeds; the target saw each request once."""
    with raw_target(lambda connection, nth: (OK, connection == 0)) as target:
        assert post(pool, target.url()).status == 200
        eventually(lambda: 0 in target.closed, 5.0, "the target to close connection 0")
        assert post(pool, target.url()).status == 200
        assert (target.connections, len(target.on(0)), len(target.on(1))) == (2, 1, 1)


def test_a_reused_connection_ending_mid_answer_is_not_sent_again(pool: Client) -> None:
    """Part of an answer arrived before the connection ended: the target may have acted on the
    request, so it is a connection error, not a second send."""
    with raw_target(lambda c, nth: (OK, False) if nth == 0 else (b"HTTP/1.1 20", True)) as target:
        post(pool, target.url())
        with pytest.raises(outbound.ConnectionFailed):
            post(pool, target.url())
        assert (target.connections, len(target.requests)) == (1, 2)


def test_a_fresh_connection_closed_without_answer_is_not_sent_again(
    pool: Client,
) -> None:
    """Only a reused connection can be stale: on a new one, no answer is a connection error."""
    with raw_target(always(b"", hang_up=True)) as target:
        with pytest.raises(outbound.ConnectionFailed, match="without response"):
            post(pool, target.url())
        assert (target.connections, len(target.requests)) == (1, 1)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_answer_that_ends_the_connection_is_not_reused(pool: Client, reply: bytes) -> None:
    """ "Connection: close" or an HTTP/1.0 answer: the next request opens a new connection (the
    target keeps the old one open, so a reuse would show as two requests on it)."""
    with raw_target(always(reply)) as target:
        post(pool, target.url())
        assert pool.idle() == 0
        post(pool, target.url())
        assert (target.connections, len(target.on(0)), len(target.on(1))) == (2, 1, 1)


def test_a_chunked_answer_is_read_and_its_connection_reused(pool: Client) -> None:
    """A chunked body is decoded; read to its end, the connection goes back to the pool."""
    chunked = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n"
    with raw_target(always(chunked)) as target:
        answer = post(pool, target.url())
        post(pool, target.url())
        assert (answer.status, answer.body, target.connections) == (500, b"bad", 1)


def test_an_answer_longer_than_the_limit_is_cut_and_its_connection_dropped(
    pool: Client,
) -> None:
    """Only ``limit`` bytes are read; the unread rest means the connection cannot be reused."""
    big = b"HTTP/1.1 500 Big\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    with raw_target(always(big)) as target:
        assert post(pool, target.url()).body == b"x" * 1024
        assert pool.idle() == 0


def test_the_pool_keeps_at_most_max_idle_connections(make_pool: Callable[[int], Client]) -> None:
    """With room for one idle connection, using a second target closes the first's."""
    pool = make_pool(1)
    with raw_target(always(OK)) as first, raw_target(always(OK)) as second:
        post(pool, first.url())
        post(pool, second.url())
        eventually(lambda: 0 in first.closed, 5.0, "the pool to close the first connection")
        assert (pool.idle(), second.closed) == (1, set())
        pool.close()
        eventually(lambda: 0 in second.closed, 5.0, "close() to end the idle connection")


def test_a_trickling_answer_is_cut_at_the_deadline(pool: Client, target: FakeTarget) -> None:
    """A byte every 50 ms keeps each read short, but the attempt still ends at its 0.3 s."""
    target.reply(Reply(200, body=b"ok", trickle=0.05))
    started = time.monotonic()
    with pytest.raises(outbound.Timeout):
        post(pool, target.url, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 1.0


def test_https_urls_make_a_verified_tls_connection(pool: Client, target: FakeTarget) -> None:
    """An https URL speaks TLS (here to a plain-HTTP port, which refuses it: a connection
    error, as httpx gave)."""
    with pytest.raises(outbound.ConnectionFailed):
        post(pool, target.url.replace("http://", "https://"))


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/hook", "http:///hook", "http://127.0.0.1:99999/", "mailto:a@b"]
)
def test_urls_that_cannot_be_sent_to_are_invalid(pool: Client, url: str) -> None:
    """A scheme other than http(s), no host or a bad port: InvalidURL, before any network."""
    with pytest.raises(outbound.InvalidURL):
        post(pool, url)


def test_an_interim_1xx_answer_is_skipped(pool: Client) -> None:
    """A 100 Continue before the answer is read past; the final answer's connection is reused."""
    with raw_target(always(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as target:
        answer = post(pool, target.url())
        post(pool, target.url())
        assert (answer.status, answer.body, target.connections) == (200, b"ok", 1)


def test_an_answer_without_length_runs_to_the_close_and_is_not_reused(
    pool: Client,
) -> None:
    """No Content-Length and not chunked: the body is what arrives until the target hangs up."""
    with raw_target(always(b"HTTP/1.1 503 Busy\r\n\r\nlater", hang_up=True)) as target:
        answer = post(pool, target.url())
        assert (answer.status, answer.body, pool.idle()) == (503, b"later", 0)


def test_header_names_are_lower_case_and_repeats_joined(pool: Client) -> None:
    """Headers are looked up by lower-case name; a repeated one reads as one list value."""
    reply = b"HTTP/1.1 429 Slow\r\nRetry-After: 7\r\nVia: a\r\nvia: b\r\nContent-Length: 0\r\n\r\n"
    with raw_target(always(reply)) as target:
        answer = post(pool, target.url())
        assert (answer.headers["retry-after"], answer.headers["via"]) == ("7", "a, b")
        assert pool.idle() == 1


@pytest.mark.parametrize("line", [b"HTTP/1.1 20 OK", b"ICY 200 OK", b"HTTP/1.1 abc Nope"])
def test_an_answer_that_is_not_http_is_a_connection_error(pool: Client, line: bytes) -> None:
    """A status line that does not parse fails the attempt as a connection error."""
    with raw_target(always(line + b"\r\nContent-Length: 0\r\n\r\n")) as target:
        with pytest.raises(outbound.ConnectionFailed):
            post(pool, target.url())
        assert pool.idle() == 0


# -- the loop's client, fed by hand: an answer arriving in pieces ---------------------------------


async def _yield_a_few_times() -> None:
    for _ in range(5):  # lets every ready callback run; waits on no clock
        await asyncio.sleep(0)


def test_the_loop_client_waits_for_a_chunked_end_split_across_reads() -> None:
    """The last chunk came, its blank line not yet: the body is not whole (the connection would
    go back to the pool with the line still to come and spoil the next answer)."""

    async def main() -> None:
        conn = outbound._Stream(("http", "127.0.0.1", 80))
        conn.data_received(b"3\r\nbad\r\n0\r\n")
        reading = asyncio.ensure_future(
            outbound._body(conn, outbound._CHUNKED, 1024, time.monotonic() + 5)
        )
        await _yield_a_few_times()
        assert not reading.done()
        conn.data_received(b"\r\n")
        assert await reading == (b"bad", True)
        assert conn.buffer == bytearray()

    asyncio.run(main())


def test_the_loop_client_reads_a_head_arriving_in_pieces() -> None:
    async def main() -> None:
        conn = outbound._Stream(("http", "127.0.0.1", 80))
        pool = outbound.LoopPool()
        conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 20")
        reading = asyncio.ensure_future(pool._head(conn, time.monotonic() + 5, reused=False))
        await _yield_a_few_times()
        assert not reading.done()
        conn.data_received(b"1 Made\r\nContent-Length: 2\r\n")
        await _yield_a_few_times()
        assert not reading.done()
        conn.data_received(b"\r\nok")
        assert await reading == (201, {"content-length": "2"}, 2)
        assert conn.buffer == bytearray(b"ok")

    asyncio.run(main())


def test_the_loop_client_hangs_up_on_a_flood() -> None:
    """A target that sends far more than any answer we read is cut off, not buffered."""
    conn = outbound._Stream(("http", "127.0.0.1", 80))
    conn.data_received(b"x" * (outbound._MAX_BUFFERED + 1))
    assert conn.ended


def test_the_threads_client_sets_a_timeout_once_per_quick_exchange(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``settimeout`` is a system call: a wait is bounded by the deadline give or take
    DEADLINE_SLACK, so the timeout set before the send serves the reads of a quick answer, and
    is set again when time went by, or for the next exchange's later deadline."""
    set_to: list[float | None] = []
    settimeout = socket.socket.settimeout

    def counting(sock: socket.socket, value: float | None) -> None:
        set_to.append(value)
        settimeout(sock, value)

    monkeypatch.setattr(socket.socket, "settimeout", counting)
    mine, other = socket.socketpair()
    with mine, other:
        conn = outbound._Connection(outbound._target("http://127.0.0.1:9/"), mine)
        conn.deadline = time.monotonic() + 10
        outbound._keep_to_deadline(conn)  # before the send
        outbound._keep_to_deadline(conn)  # before a read of the answer, at once
        assert len(set_to) == 1 and set_to[0] is not None and 9 < set_to[0] <= 10
        conn.deadline -= 1  # as if a second went by: the timeout set would overshoot
        outbound._keep_to_deadline(conn)
        assert len(set_to) == 2 and set_to[1] is not None and set_to[1] <= 9
        conn.deadline = time.monotonic() + 20  # the next exchange: more time than set
        outbound._keep_to_deadline(conn)
        assert len(set_to) == 3 and set_to[2] is not None and set_to[2] > 19
        left = mine.gettimeout()
        assert left is not None and left <= conn.left() + outbound.DEADLINE_SLACK
        conn.deadline = time.monotonic() - 0.001
        with pytest.raises(TimeoutError):
            outbound._keep_to_deadline(conn)

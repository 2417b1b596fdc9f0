"""A hostile client against the real ``ingress-box serve`` (CONTRACT, "Limits at the edge").

The box runs as a child process on a free 127.0.0.1 port with small limits; the tests speak raw
HTTP/1.1 over sockets: oversized and endless headers, slow and stalled headers and bodies, idle
connections, and a flood of connections under a low open-files limit. Every wait polls the
socket with a deadline; every load is bounded in count and size.
"""

from __future__ import annotations

import concurrent.futures
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from serving import BoxProcess
from signers import sign_generic

from ingress_box.config import load_settings
from ingress_box.errors import ConfigError
from ingress_box.web.server import RESERVED_FDS, RESERVED_FDS_PER_WORKER

TOKEN = "hostile-edge-admin-token"
SECRET = "hostile-edge-secret"
READ_TIMEOUT = 1.0
SLACK = 2.0  # a shared 2-core machine: how late a timer may fire and a close arrive
MAX_HEADER_BYTES = 8192
HOOK = "/ingress/generic/main/events"
MiB = 1 << 20


class Serve(BoxProcess):
    """``ingress-box serve`` as a child process; ``nofile`` sets its open-files limit."""

    def __init__(self, tmp: Path, nofile: tuple[int, int] | None = None, **env: str) -> None:
        super().__init__(
            tmp / "box.db", nofile=nofile, env={"INGRESS_BOX_WORKERS": "1", **env}, token=TOKEN
        )

    def add_generic(self) -> None:
        self.add_instance(target_url="http://127.0.0.1:9/unused", secret=SECRET)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One box with a 1 s read timeout and an 8 KiB header cap, and a `generic/main` instance."""
    served = Serve(
        tmp_path_factory.mktemp("edge"),
        INGRESS_BOX_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
        INGRESS_BOX_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    )
    try:
        served.wait_ready().add_generic()
        yield served
        assert served.proc.poll() is None, served.output()
        assert "Traceback" not in served.output()
    finally:
        served.stop()


# -- raw HTTP -----------------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"still open after {seconds} s (got {got[:80]!r})")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def keep_sending_until_closed(
    sock: socket.socket, piece: bytes, every: float, seconds: float
) -> float:
    """Send ``piece`` every ``every`` s until the server closes; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            assert not data.startswith(b"HTTP/1.1 5"), data
            if not data:
                return time.monotonic() - start
    raise AssertionError(f"a trickling client was still connected after {seconds} s")


def signed_request(n: int) -> bytes:
    body = f'{{"n": {n}}}'.encode()
    headers = {
        "content-type": "application/json",
        **sign_generic(SECRET, body, msg_id=f"edge-{n}"),
    }
    lines = [f"POST {HOOK} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(sock: socket.socket, seconds: float = 5) -> int:
    """The status of the next response on ``sock``, read whole (head and Content-Length body)."""
    sock.settimeout(seconds)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a whole response head (got {data!r})"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    length = int(fields.get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed in the middle of a response body"
        rest += chunk
    return int(lines[0].split(b" ", 2)[1])


# -- header bytes -------------------------------------------------------------------------------


def test_a_header_block_over_the_cap_gets_431(box: Serve) -> None:
    """Headers that arrive whole, a little over the cap, get 431 with the one error body."""
    with connect(box.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n")
        answer = read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert answer.endswith(
        b'{"error": {"code": "headers_too_large", "message": "the request headers are too large"}}'
    )


def test_headers_just_under_the_cap_are_served(box: Serve) -> None:
    """The cap counts the request line and headers: 7,000 bytes of header fit in 8 KiB."""
    with connect(box.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 7000 + b"\r\n\r\n")
        assert status_of(sock) == 200


def test_a_later_request_on_a_kept_alive_connection_is_held_to_the_cap_too(box: Serve) -> None:
    """The count starts again with each request: a small one passes, the next too large one
    on the same connection gets 431."""
    with connect(box.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status_of(sock) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n")
        answer = read_until_closed(sock, 5)
    assert b"HTTP/1.1 431 " in answer, answer[:200]


def push_endless_header(port: int, total: int = 30 * MiB) -> tuple[int, bytes]:
    """Send one header of ``total`` bytes, never finished; how much went out, and the answer."""
    sent = 0
    with connect(port) as sock:
        try:
            sock.sendall(b"POST " + HOOK.encode() + b" HTTP/1.1\r\nhost: x\r\nx-junk: ")
            piece = b"a" * 65536
            while sent < total:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if sent >= total:
            return sent, b""  # the server took it all: the failure under test
        try:
            return sent, read_until_closed(sock, 5)
        except ConnectionResetError:
            return sent, b""


def test_an_endless_header_is_cut_near_the_cap(box: Serve) -> None:
    """A 30 MiB header is refused (431, or the connection closed) long before its end."""
    sent, answer = push_endless_header(box.port)
    assert sent < 30 * MiB
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_ten_endless_headers_do_not_grow_the_process(box: Serve) -> None:
    """Ten connections pushing 30 MiB headers at once leave the server's memory where it was
    (unbounded buffering took it from 48 to 408 MiB)."""
    before = box.rss_kib()
    peak = before
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        pushes = [pool.submit(push_endless_header, box.port) for _ in range(10)]
        deadline = time.monotonic() + 60
        while not all(p.done() for p in pushes):
            assert time.monotonic() < deadline, "the pushes did not end"
            peak = max(peak, box.rss_kib())
            concurrent.futures.wait(pushes, timeout=0.02)
    for push in pushes:
        assert push.result()[0] < 30 * MiB
    assert peak - before < 32 * 1024, f"RSS grew {before} -> {peak} KiB"


# -- read deadlines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opening",
    [
        b"",  # a connection that never says anything
        b"POST " + HOOK.encode() + b" HTTP/1.1\r\nhost: x\r\n",  # half a header block
        b"POST " + HOOK.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{",
    ],
    ids=["silent", "half-sent-header", "stalled-content-length-body"],
)
def test_a_stalled_client_is_closed_after_the_read_timeout(box: Serve, opening: bytes) -> None:
    """Headers or a body that stop coming: the connection is closed, with no 5xx."""
    with connect(box.port) as sock:
        started = time.monotonic()
        sock.sendall(opening)
        answer = read_until_closed(sock, READ_TIMEOUT + SLACK)
        took = time.monotonic() - started
    assert answer == b"", answer[:80]
    assert took >= READ_TIMEOUT * 0.9, f"closed after {took:.2f} s: before its deadline"


@pytest.mark.parametrize(
    ("opening", "piece"),
    [
        (b"POST " + HOOK.encode() + b" HTTP/1.1\r\nhost: x\r\nx-slow: ", b"a"),
        (
            b"POST "
            + HOOK.encode()
            + b" HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            b"1\r\na\r\n",
        ),
    ],
    ids=["trickled-header", "trickled-chunked-body"],
)
def test_a_trickle_is_cut_by_a_total_deadline(box: Serve, opening: bytes, piece: bytes) -> None:
    """A byte every quarter second never leaves the connection idle, and is cut all the same."""
    with connect(box.port) as sock:
        sock.sendall(opening)
        took = keep_sending_until_closed(sock, piece, every=0.25, seconds=READ_TIMEOUT + SLACK)
    assert took < READ_TIMEOUT + SLACK


def test_an_idle_keep_alive_connection_is_closed(box: Serve) -> None:
    """After an answer, a connection that sends nothing more is closed by the keep-alive timer,
    never longer than the read timeout."""
    with connect(box.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status_of(sock) == 200
        read_until_closed(sock, READ_TIMEOUT + SLACK)


def test_the_deadline_is_per_request_not_per_connection(box: Serve) -> None:
    """Prompt requests on one connection for longer than the read timeout are all answered."""
    with connect(box.port) as sock:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < READ_TIMEOUT * 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert status_of(sock) == 200
            answered += 1
            assert select.select([sock], [], [], READ_TIMEOUT / 4)[0] == []  # still open, idle
    assert answered >= 4


def test_a_slow_body_within_the_deadline_is_accepted(box: Serve) -> None:
    """A body sent in pieces, all of it within the read timeout, is a normal webhook (202)."""
    request = signed_request(1)
    head, body = request.split(b"\r\n\r\n", 1)
    with connect(box.port) as sock:
        sock.sendall(head + b"\r\n\r\n")
        for byte in body[:-1]:
            sock.sendall(bytes([byte]))
        sock.sendall(body[-1:])
        assert status_of(sock) == 202


def test_slow_clients_do_not_hold_up_the_others(box: Serve) -> None:
    """With twenty half-sent requests open, /healthz and a signed webhook are answered at once."""
    slow = [connect(box.port) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"POST " + HOOK.encode() + b" HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        assert httpx.get(box.url + "/healthz", timeout=5).status_code == 200
        with connect(box.port) as sock:
            sock.sendall(signed_request(2))
            assert status_of(sock) == 202
        assert time.monotonic() - started < READ_TIMEOUT
    finally:
        for sock in slow:
            sock.close()


# -- connections and the open-files limit --------------------------------------------------------

WORKERS = 1
RESERVE = RESERVED_FDS + RESERVED_FDS_PER_WORKER * WORKERS


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    """A soft limit too low for MAX_CONNECTIONS is raised at start, and no warning is needed."""
    served = Serve(tmp_path, nofile=(RESERVE + 10, 4096), INGRESS_BOX_MAX_CONNECTIONS="1000")
    try:
        served.wait_ready()
        limits = Path(f"/proc/{served.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
        assert "open-files limit" not in served.output()
    finally:
        served.stop()


def test_an_absurdly_low_open_files_limit_is_a_one_line_error(tmp_path: Path) -> None:
    """When the limit leaves only a handful of connections, serve refuses to start: exit 2."""
    served = Serve(tmp_path, nofile=(RESERVE + 5, RESERVE + 5))
    try:
        assert served.proc.wait(timeout=20) == 2
    finally:
        served.stop()
    lines = [line for line in served.output().splitlines() if "open-files limit" in line]
    assert len(lines) == 1 and "ulimit -n" in lines[0], served.output()
    assert "Traceback" not in served.output()


def poll(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_connection_flood_is_refused_and_healthz_comes_back(tmp_path: Path) -> None:
    """Under an open-files limit that holds 30 connections, a flood of idle ones past them is
    refused at once (503 or closed) while a webhook on an open connection still gets 202, and
    /healthz answers again from a fresh connection once the flood's connections time out."""
    cap, extra, read_timeout = 30, 10, 3.0
    served = Serve(
        tmp_path,
        nofile=(RESERVE + cap, RESERVE + cap),
        INGRESS_BOX_READ_TIMEOUT_SECONDS=str(read_timeout),
    )
    flood: list[socket.socket] = []
    try:
        served.wait_ready().add_generic()
        lowered = [line for line in served.output().splitlines() if "open-files limit" in line]
        assert len(lowered) == 1 and f"serving at most {cap}" in lowered[0], served.output()

        flood.append(connect(served.port))  # one of the 30, opened before the flood
        early = flood[0]
        started = time.monotonic()
        flood += [connect(served.port) for _ in range(cap - 1 + extra)]
        early.sendall(signed_request(3))
        assert status_of(early) == 202

        refused: list[socket.socket] = []
        deadline = time.monotonic() + 1.5
        while len(refused) < extra and time.monotonic() < deadline:
            waiting = [sock for sock in flood[1:] if sock not in refused]
            refused += select.select(waiting, [], [], 0.05)[0]
        for sock in refused:
            answer = read_until_closed(sock, 1)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:80]
        still_open = [sock for sock in flood[1:] if sock not in refused]
        assert (len(refused), len(still_open)) == (extra, cap - 1)
        assert select.select(still_open, [], [], 0)[0] == [], "a connection under the cap closed"
        assert time.monotonic() - started < read_timeout, "refusals were not at once"

        with connect(served.port) as sock:  # a fresh connection during the flood
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = read_until_closed(sock, 1)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:80]

        def healthy() -> bool:
            try:
                return httpx.get(served.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll(healthy, read_timeout + SLACK, "/healthz never came back after the flood")
        assert served.proc.poll() is None
        assert served.output().count("connection limit reached") == 1
        assert "Traceback" not in served.output()
    finally:
        for sock in flood:
            sock.close()
        served.stop()


# -- the settings -----------------------------------------------------------------------------


def test_the_edge_defaults_follow_the_contract() -> None:
    """32 KiB of headers, 10 s to send them or a body, 1,000 connections."""
    s = load_settings({})
    assert (s.max_header_bytes, s.read_timeout_seconds, s.max_connections) == (32768, 10.0, 1000)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("INGRESS_BOX_MAX_HEADER_BYTES", "0"),
        ("INGRESS_BOX_MAX_HEADER_BYTES", "100"),
        ("INGRESS_BOX_MAX_HEADER_BYTES", "20000000"),
        ("INGRESS_BOX_READ_TIMEOUT_SECONDS", "nan"),
        ("INGRESS_BOX_READ_TIMEOUT_SECONDS", "inf"),
        ("INGRESS_BOX_READ_TIMEOUT_SECONDS", "0"),
        ("INGRESS_BOX_READ_TIMEOUT_SECONDS", "-1"),
        ("INGRESS_BOX_READ_TIMEOUT_SECONDS", "601"),
        ("INGRESS_BOX_MAX_CONNECTIONS", "0"),
        ("INGRESS_BOX_MAX_CONNECTIONS", "2000000"),
    ],
)
def test_edge_settings_out_of_range_are_refused(name: str, raw: str) -> None:
    """Each edge limit is finite, positive and sanely bounded; the error names the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw})
    assert name in str(caught.value)

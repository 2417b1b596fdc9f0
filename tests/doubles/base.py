"""The shared kit of the doubles: `HttpDouble` serves an API, `Emitter` posts its webhooks.

A double subclasses `HttpDouble`, marks handler methods with `@route("POST", "/x/{id}")`, and
owns one or more `Emitter`s (registered with `self.emitters`, so stopping the double stops them):

    class FakeThing(HttpDouble):
        @route("POST", "/api/things/{id}")
        def make(self, call: Call) -> Reply:
            return 201, {"id": call.params["id"]}, {}

    with FakeThing() as thing:
        thing.fail_next("POST", "/api/things", count=2, status=503)
        ...  # the code under test talks to thing.url
        assert thing.calls_to("POST", "/api/things")[-1].json == {...}

Standard library only; every public method is safe from any thread.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import heapq
import http.server
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

Reply = tuple[int, Any, Mapping[str, str]]  # status, JSON-able value or raw bytes, headers
H = TypeVar("H", bound=Callable[..., Reply])


@dataclass(frozen=True)
class FormPart:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Call:
    """One request as the double received it."""

    method: str
    path: str  # without the query string
    params: dict[str, str]  # the `{name}` parts of the route; empty when no route matched
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # the parsed body, or None when it is not JSON
    at: float = field(default_factory=time.time)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def form(self) -> list[FormPart]:
        """The parts of a multipart/form-data or urlencoded body (empty for anything else)."""
        kind = self.headers.get("content-type", "")
        if kind.startswith("application/x-www-form-urlencoded"):
            pairs = urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True)
            return [FormPart(k, v.encode()) for k, v in pairs]
        if not kind.startswith("multipart/form-data"):
            return []
        head = f"Content-Type: {kind}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        parts = []
        for part in message.iter_parts():
            payload = part.get_payload(decode=True)
            name = part.get_param("name", header="content-disposition")
            parts.append(
                FormPart(
                    str(name or ""),
                    payload if isinstance(payload, bytes) else b"",
                    part.get_filename(),
                    part.get_content_type() if part.get_filename() else None,
                )
            )
        return parts


def route(method: str, pattern: str) -> Callable[[H], H]:
    """Mark a method of an `HttpDouble` subclass as the handler of `method pattern`."""

    def mark(handler: H) -> H:
        handler.__dict__.setdefault("_routes", []).append((method.upper(), pattern))
        return handler

    return mark


@dataclass
class _Fault:
    method: str
    prefix: str
    left: int
    status: int
    stall: float  # seconds to hold the answer (a client timeout), cut short by stop()
    after: bool  # let the handler run (the write happens) and then fail or stall


class HttpDouble:
    """A real HTTP server on 127.0.0.1 (a free port) serving the routes of a subclass."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.emitters: list[Emitter] = []
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._routes: list[tuple[str, re.Pattern[str], Callable[[Call], Reply]]] = []
        for name in dir(type(self)):
            for method, pattern in getattr(getattr(type(self), name), "_routes", ()):
                regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern))
                self._routes.append((method, re.compile(regex), getattr(self, name)))
        self._routes.sort(key=lambda r: r[1].pattern.count("(?P<"))  # literal segments win
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the double is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def calls(self) -> list[Call]:
        with self.lock:
            return list(self._calls)

    def calls_to(self, method: str, path_prefix: str = "/") -> list[Call]:
        return [
            c for c in self.calls if c.method == method.upper() and c.path.startswith(path_prefix)
        ]

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        count: int = 1,
        status: int = 500,
        *,
        after: bool = False,
    ) -> None:
        """Answer the next `count` matching requests with `status` (after the write if `after`)."""
        with self.lock:
            self._faults.append(_Fault(method.upper(), path_prefix, count, status, 0.0, after))

    def stall_next(
        self,
        method: str,
        path_prefix: str,
        count: int = 1,
        seconds: float = 30.0,
        *,
        after: bool = False,
    ) -> None:
        """Hold the next `count` matching answers `seconds` long, so the client times out."""
        with self.lock:
            self._faults.append(_Fault(method.upper(), path_prefix, count, 504, seconds, after))

    def authorize(self, call: Call) -> Reply | None:
        """Override to refuse a request before routing (return the refusal), or None to pass."""
        return None

    def start(self) -> Self:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for emitter in self.emitters:
            emitter.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def handle(self, call: Call) -> Reply:
        """Route, record, fault and authorize one request (run on the server's thread)."""
        handler: Callable[[Call], Reply] | None = None
        refusal: Reply = (404, {"error": "not found", "path": call.path}, {})
        for method, regex, candidate in self._routes:
            if (match := regex.fullmatch(call.path)) is not None:
                if method == call.method:
                    handler, call = candidate, dataclasses.replace(call, params=match.groupdict())
                    break
                refusal = (405, {"error": "method not allowed"}, {})
        with self.lock:
            self._calls.append(call)
            fault = next((f for f in self._faults if f.left > 0 and call.method == f.method
                          and call.path.startswith(f.prefix)), None)  # fmt: skip
            if fault is not None:
                fault.left -= 1
        if fault is not None and not fault.after:
            return self._fault_reply(fault)
        reply = self.authorize(call) or (handler(call) if handler else refusal)
        return self._fault_reply(fault) if fault is not None else reply

    def _fault_reply(self, fault: _Fault) -> Reply:
        if fault.stall:
            self._stopping.wait(fault.stall)
        return fault.status, {"error": "fault injected by the test", "status": fault.status}, {}


def _handler_for(double: HttpDouble) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            call = Call(self.command, url.path, {}, urllib.parse.parse_qs(url.query, True),
                        {k.lower(): v for k, v in self.headers.items()}, body, parsed)  # fmt: skip
            status, value, headers = double.handle(call)
            raw = value if isinstance(value, bytes) else json.dumps(value).encode()
            self.send_response(status)
            if "content-type" not in {k.lower() for k in headers}:
                kind = (
                    "application/octet-stream" if isinstance(value, bytes) else "application/json"
                )
                self.send_header("Content-Type", kind)
            for name, text in headers.items():
                self.send_header(name, text)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass(frozen=True)
class Attempt:
    """One POST of a webhook: `status` None means a transport error (see `error`)."""

    url: str
    body: bytes
    headers: dict[str, str]
    number: int  # 1 for the first try of a copy, 2 for its first retry, ...
    status: int | None
    error: str | None
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Delivery:
    """One webhook handed to `Emitter.emit`; `done` is set when every copy has finished."""

    url: str
    body: bytes
    headers: dict[str, str]
    copies: int
    attempts: list[Attempt] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float = 10.0) -> bool:
        return self.done.wait(timeout)

    @property
    def delivered(self) -> bool:
        return any(a.status is not None and 200 <= a.status < 300 for a in self.attempts)


Signer = Callable[[bytes, int], Mapping[str, str]]  # (body, attempt number) -> headers to add


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never a proxy


def retry_unless_2xx(status: int | None) -> bool:
    return status is None or not 200 <= status < 300


class Emitter:
    """Posts webhooks from its own thread(s): each delivery waits `delay`, then is tried once
    plus once per entry of `retry_delays` while `retryable(status)` says so (None = error)."""

    def __init__(
        self,
        sign: Signer | None = None,
        *,
        retry_delays: Sequence[float] = (),
        retryable: Callable[[int | None], bool] = retry_unless_2xx,
        timeout: float = 5.0,
        workers: int = 1,
        on_attempt: Callable[[Delivery, Attempt], None] | None = None,
    ) -> None:
        self.sign, self.retry_delays, self.retryable = sign, list(retry_delays), retryable
        self.timeout, self.on_attempt = timeout, on_attempt
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Delivery, int]] = []  # due, seq, delivery, attempt
        self._seq = itertools.count()
        self._busy = 0
        self._left: dict[int, int] = {}  # id(delivery) -> copies not finished
        self._attempts: list[Attempt] = []
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def emit(
        self,
        url: str,
        payload: Any,
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        copies: int = 1,
    ) -> Delivery:
        """Queue `payload` (JSON-able, or bytes sent as they are) for `url`, `copies` times."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        delivery = Delivery(
            url, body, {"Content-Type": "application/json", **(headers or {})}, copies
        )
        with self._cond:
            self._left[id(delivery)] = copies
            for _ in range(copies):
                heapq.heappush(
                    self._queue, (time.monotonic() + delay, next(self._seq), delivery, 1)
                )
            self._cond.notify_all()
        return delivery

    @property
    def attempts(self) -> list[Attempt]:
        with self._cond:
            return list(self._attempts)

    def attempts_to(self, url_prefix: str) -> list[Attempt]:
        return [a for a in self.attempts if a.url.startswith(url_prefix)]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued or in flight; False if that did not happen in time."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    flush = wait_idle

    def stop(self) -> None:
        """Drop what is queued and end the threads (an attempt in flight ends by its timeout)."""
        with self._cond:
            self._stopped = True
            for _, _, delivery, _ in self._queue:
                delivery.done.set()
            self._queue.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(self.timeout + 1)

    def _next(self) -> tuple[Delivery, int] | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                if self._queue and self._queue[0][0] <= now:
                    _, _, delivery, number = heapq.heappop(self._queue)
                    self._busy += 1
                    return delivery, number
                self._cond.wait(self._queue[0][0] - now if self._queue else None)
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            delivery, number = job
            attempt = self._post(delivery, number)
            retry = self.retryable(attempt.status) and number <= len(self.retry_delays)
            with self._cond:
                self._attempts.append(attempt)
                delivery.attempts.append(attempt)
                if retry and not self._stopped:
                    due = time.monotonic() + self.retry_delays[number - 1]
                    heapq.heappush(self._queue, (due, next(self._seq), delivery, number + 1))
                else:
                    self._left[id(delivery)] -= 1
            if self.on_attempt is not None:
                self.on_attempt(delivery, attempt)
            with self._cond:
                if self._left.get(id(delivery)) == 0:
                    del self._left[id(delivery)]
                    delivery.done.set()
                self._busy -= 1
                self._cond.notify_all()

    def _post(self, delivery: Delivery, number: int) -> Attempt:
        headers = {**delivery.headers, **(self.sign(delivery.body, number) if self.sign else {})}
        request = urllib.request.Request(delivery.url, delivery.body, headers, method="POST")
        status: int | None = None
        error: str | None = None
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except (OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
            error = f"{type(exc).__name__}: {exc}"
        return Attempt(delivery.url, delivery.body, headers, number, status, error, time.time())

"""What the four WhatsApp gateway doubles share, on top of `base`.

A gateway double is an `HttpDouble` with a send ledger, a store of inbound media it serves, one
`Emitter` for its webhooks (signed and retried as the real gateway does, the delays multiplied by
`time_scale` so tests run fast) and the faults a bridge must survive:

- every send is recorded as a `Sent` (chat, kind, text or caption, media, the key id) and then
  reported back as the gateway's own "from me" event, after the HTTP answer has been written,
  or before it when `echo_before_answer` is set (the race a bridge's echo check must win);
  `echo_sends = False` turns the report off;
- `fail_next` / `stall_next` (from `base`: a 5xx, or a timeout) and `drop_next` here: the
  connection is closed without an answer, before the handler runs (nothing was sent) or, with
  `after=True`, after it (the message went out, the answer is lost);
- `refuse()` closes the listening socket and every open connection, so clients get "connection
  refused" until `accept()` opens the same port again.

    with FakeWAHA(webhook_url) as waha:
        waha.drop_next("POST", "/api/sendText", after=True)
        ...  # the bridge sends, sees a reset, must not send twice
        assert len(waha.sent) == 1
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.server
import json
import mimetypes
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from .base import Call, Delivery, Emitter, HttpDouble, Reply, _handler_for, retry_unless_2xx

MEDIA_KINDS = ("image", "audio", "voice", "video", "document")


def jid(chat: str, server: str) -> str:
    """`chat` as a JID: kept when it already has a server part, else `<digits>@<server>`."""
    return chat if "@" in chat else f"{chat.lstrip('+')}@{server}"


def user(chat: str) -> str:
    """The part of a JID before the `@` (the phone digits, the LID, the group id)."""
    return chat.split("@", 1)[0]


def is_group(chat: str) -> bool:
    return chat.endswith("@g.us")


def new_key_id() -> str:
    """A WhatsApp message key id in the form linked (web) devices use: `3EB0` + 18 hex digits."""
    return "3EB0" + secrets.token_hex(9).upper()


def b64decode(text: str) -> bytes | None:
    """The bytes of a base64 (or data: URL) string, or None when it is not base64."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Media:
    """Bytes a contact sends (`inbound(..., media=Media(...))`); the text becomes the caption."""

    kind: str  # one of MEDIA_KINDS; "voice" is an audio note (ptt)
    data: bytes
    mimetype: str
    filename: str | None = None

    def __post_init__(self) -> None:
        assert self.kind in MEDIA_KINDS, f"unknown media kind {self.kind!r}"


@dataclass(frozen=True)
class Sent:
    """One message the gateway accepted through its send API."""

    chat: str  # the target as the gateway normalized it (a JID)
    kind: str  # "text" or one of MEDIA_KINDS
    text: str | None  # the text, or the media's caption
    key_id: str  # the raw WhatsApp key id
    message_id: (
        str | None
    )  # the id the API answered (WAHA/OpenWA serialize it; None if unconfirmed)
    media: Mapping[str, Any] | None  # the media fields of the request (url, base64, mimetype, ...)
    media_bytes: bytes | None  # the media's bytes when the request carried them (upload, base64)
    call: Call


@dataclass(frozen=True)
class Inbound:
    """What `inbound()` emitted for one simulated message."""

    key_id: str
    chat: str
    deliveries: list[Delivery]

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until every webhook of this message has finished (delivered or given up)."""
        deadline = time.monotonic() + timeout
        return all(d.wait(max(0.0, deadline - time.monotonic())) for d in self.deliveries)

    @property
    def payloads(self) -> list[Any]:
        return [json.loads(d.body) for d in self.deliveries]


class _Drop(Exception):
    """Raised through the request handler to close the connection without an answer."""


@dataclass
class _DropFault:
    method: str
    prefix: str
    left: int
    after: bool


class GatewayDouble(HttpDouble):
    """The shared machinery of FakeWAHA, FakeEvolution, FakeGOWA and FakeOpenWA."""

    def __init__(
        self,
        webhook_url: str | None,
        *,
        sign: Callable[[bytes, int], Mapping[str, str]] | None,
        retry_delays: Sequence[float],
        retryable: Callable[[int | None], bool] = retry_unless_2xx,
        webhook_timeout: float = 10.0,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.webhook_url = webhook_url
        self.clock = clock
        self.echo_sends = True
        self.echo_before_answer = False
        self._sent: list[Sent] = []
        self._media: dict[str, tuple[bytes, str]] = {}
        self._drops: list[_DropFault] = []
        self._pending = threading.local()  # per request thread: actions to run after the answer
        self._connections: set[socket.socket] = set()
        self._port = 0
        self.emitter = Emitter(
            sign,
            retry_delays=[d * time_scale for d in retry_delays],
            retryable=retryable,
            timeout=webhook_timeout,
        )
        self.emitters.append(self.emitter)

    # -- what a test reads ---------------------------------------------------------------

    @property
    def sent(self) -> list[Sent]:
        with self.lock:
            return list(self._sent)

    def sent_to(self, chat: str) -> list[Sent]:
        return [s for s in self.sent if s.chat == chat]

    @property
    def webhooks(self) -> list[Any]:
        """The JSON bodies of every webhook attempt so far, in order (retries included)."""
        return [a.json for a in self.emitter.attempts]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self.emitter.wait_idle(timeout)

    # -- faults ----------------------------------------------------------------------------

    def drop_next(
        self, method: str, path_prefix: str, count: int = 1, *, after: bool = False
    ) -> None:
        """Close the next `count` matching connections without an answer; with `after`, only
        once the handler has run (the message was sent and is recorded)."""
        with self.lock:
            self._drops.append(_DropFault(method.upper(), path_prefix, count, after))

    def refuse(self) -> None:
        """Stop listening and cut every open connection: clients get "connection refused"."""
        server, thread = self._server, self._thread
        assert server is not None and thread is not None, "the double is not started"
        server.shutdown()
        server.server_close()
        thread.join(5)
        with self.lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the other side
                connection.shutdown(socket.SHUT_RDWR)

    def accept(self) -> None:
        """Listen again, on the same port, after `refuse()`."""
        self._listen(self._port)

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._listen(0)
        return self

    def _listen(self, port: int) -> None:
        double = self
        base_handler = _handler_for(self)

        class Handler(base_handler):  # type: ignore[valid-type,misc]
            def setup(self) -> None:
                super().setup()
                with double.lock:
                    double._connections.add(self.connection)

            def finish(self) -> None:
                with double.lock:
                    double._connections.discard(self.connection)
                super().finish()

            def handle_one_request(self) -> None:
                double._pending.actions = []
                try:
                    super().handle_one_request()
                except _Drop:
                    self.close_connection = True
                finally:
                    actions, double._pending.actions = double._pending.actions, None
                    for action in actions:
                        action()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def handle(self, call: Call) -> Reply:
        with self.lock:
            drop = next(
                (
                    d
                    for d in self._drops
                    if d.left > 0 and d.method == call.method and call.path.startswith(d.prefix)
                ),
                None,
            )
            if drop is not None:
                drop.left -= 1
                if not drop.after:
                    self._calls.append(call)
        if drop is not None and not drop.after:
            raise _Drop
        reply = super().handle(call)
        if drop is not None:
            raise _Drop
        return reply

    def after_answer(self, action: Callable[[], None]) -> None:
        """Run `action` once the current request's answer is written (now, outside a request)."""
        actions: list[Callable[[], None]] | None = getattr(self._pending, "actions", None)
        if actions is None:
            action()
        else:
            actions.append(action)

    # -- the send ledger and its echo ------------------------------------------------------

    def record(self, sent: Sent, echo: Callable[[Sent], Iterable[Delivery]]) -> Sent:
        """Put `sent` in the ledger and schedule the gateway's report of it (`echo`)."""
        with self.lock:
            self._sent.append(sent)
            echo_now, before = (
                self.echo_sends and self.webhook_url is not None,
                self.echo_before_answer,
            )
        if not echo_now:
            return sent
        if before:
            for delivery in list(echo(sent)):
                delivery.wait(self.emitter.timeout * (len(self.emitter.retry_delays) + 1))
        else:

            def report() -> None:
                list(echo(sent))

            self.after_answer(report)
        return sent

    # -- inbound media ---------------------------------------------------------------------

    def store_media(self, media: Media, stem: str) -> str:
        """Keep `media` to be served; returns its file name (`<stem>.<ext>`)."""
        ext = mimetypes.guess_extension(media.mimetype.split(";")[0].strip()) or ".bin"
        name = f"{stem}{ext}"
        with self.lock:
            self._media[name] = (media.data, media.mimetype)
        return name

    def media_reply(self, name: str) -> Reply:
        with self.lock:
            found = self._media.get(name)
        if found is None:
            return 404, {"error": "file not found", "name": name}, {}
        data, mimetype = found
        return 200, data, {"Content-Type": mimetype}

    # -- webhooks --------------------------------------------------------------------------

    def post(
        self,
        payload: Any,
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        copies: int = 1,
        delay: float = 0.0,
    ) -> Delivery:
        """Queue one webhook (signed by the gateway's signer, retried by its policy)."""
        target = url or self.webhook_url
        assert target is not None, "no webhook_url configured"
        return self.emitter.emit(target, payload, headers=headers, copies=copies, delay=delay)

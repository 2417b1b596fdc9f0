"""The provider-facing endpoint ``ANY /ingress/{plugin}/{instance}/{route}[/{anything}]``.

Plain ASGI, in front of Starlette (see :class:`ingress_box.app.App`): the hottest path skips
routing and the request/response layers. It turns the ASGI scope into an
:class:`~ingress_box.ingress.Inbound` and sends back the pipeline's
:class:`~ingress_box.ingress.Answer`; everything else is :mod:`ingress_box.ingress`'s job.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.types import Receive, Scope, Send

from ..config import Settings
from ..errors import ClientDisconnected
from ..ingress import Answer, Inbound, error
from .box import Box

PREFIX = "/ingress/"
# Digits as a server would frame them: str.isdigit() also takes "²", which int() refuses.
_LENGTH = re.compile(r"[0-9]{1,18}")
_NOT_FOUND = error(404, "not_found", "no such plugin, instance or route")


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _public_url(scope: Scope, headers: dict[str, str], settings: Settings) -> str:
    """The URL the provider called: the configured public base, else what the request says.

    Built from the raw path and query (as the provider signed them), not re-encoded.
    """
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")  # raw_path is optional
    tail: str = raw_path.decode("latin-1")
    if scope["query_string"]:
        tail += "?" + scope["query_string"].decode("latin-1")
    if settings.public_url:
        return settings.public_url.rstrip("/") + tail
    return f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}{tail}"


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _parts(path: str) -> tuple[str, str, str, str] | None:
    """(plugin, instance, route, rest) of an ingress path; None when it names no route."""
    plugin, instance, route, rest = (path[len(PREFIX) :].split("/", 3) + ["", "", ""])[:4]
    if not (plugin and instance and route):  # /ingress/, /ingress/x, /ingress/x/y, ...
        return None
    try:
        path.encode("utf-8")  # a server decodes paths to text; only a broken caller does not
    except UnicodeEncodeError:
        return None
    return plugin, instance, route, rest


async def endpoint(box: Box, scope: Scope, receive: Receive, send: Send) -> None:
    """``ANY /ingress/{plugin}/{instance}/{route}[/{anything}]``, as plain ASGI."""
    parts = _parts(scope["path"])
    if parts is None:
        plugin, _, rest = scope["path"][len(PREFIX) :].partition("/")
        box.metrics.unmatched.note(plugin, rest.partition("/")[0])
        await _send(send, _NOT_FOUND)
        return
    plugin, instance, route, rest = parts
    headers = _headers(scope)
    length = headers.get("content-length", "").strip()
    query = scope["query_string"].decode("latin-1")
    inbound = Inbound(
        method=scope["method"],
        plugin=plugin,
        instance=instance,
        route=route,
        subpath=rest + ("?" + query if query else ""),
        url=_public_url(scope, headers, box.settings),
        query_string=query,
        headers=headers,
        body=_body(receive),
        content_length=int(length) if _LENGTH.fullmatch(length) else None,
    )
    try:
        answer = await box.ingress.handle(inbound)
    except ClientDisconnected:
        return
    await _send(send, answer)


async def _send(send: Send, answer: Answer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", answer.content_type.encode("latin-1")),
                (b"content-length", str(len(answer.body)).encode()),
                *(
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in answer.headers.items()
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})

"""What the pipeline reads out of a verified request: ids, the conversation, safe headers.

All pure functions of the raw bytes and headers; nothing here can raise on hostile input except
:class:`BodyNotJson` and :class:`BadDeliveryId`, which the pipeline answers with 400.

A value read out of a request (a dedup id, a conversation, a mapping field) is used only when it
is valid text of at most :data:`MAX_VALUE_CHARS` characters: a lone UTF-16 surrogate from a JSON
string cannot be stored or sent, and a 200 KB id would become a 200 KB forwarded header. Header
values arrive as the edge decodes them (latin-1, one character per byte); the value read is the
text their bytes spell in UTF-8, so it is forwarded as the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from .plugins import Pointer, Route
from .values import is_text

REDACTED = "[redacted]"
# Header names whose values are credentials wherever they appear.
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-access-token",
    }
)
# ...and any header whose name says it carries one (not "token": idempotency tokens are ids).
_SECRET_WORDS = ("signature", "secret", "password")
MAX_VALUE_CHARS = 512
MAX_EVENT_TYPE_CHARS = 128


class BodyNotJson(ValueError):
    """A route dedups on a JSON pointer but the body is not JSON."""


class BadDeliveryId(ValueError):
    """The route's dedup value is there but is not valid text, or is too long."""


def text(value: str) -> str | None:
    """``value`` when it is valid text of at most MAX_VALUE_CHARS characters, else None."""
    return value if len(value) <= MAX_VALUE_CHARS and is_text(value) else None


def header_text(value: str) -> str | None:
    """The text a header value's bytes spell in UTF-8, trimmed; None when they spell none."""
    if len(value) > 4 * MAX_VALUE_CHARS:  # too long whatever it decodes to: skip the work
        return None
    try:
        decoded = value.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:  # not as the edge decodes headers: take it as text already
        decoded = value
    except UnicodeDecodeError:
        return None
    return text(decoded.strip())


class Body:
    """The raw body with its JSON and form views parsed at most once."""

    _UNSET: Any = object()

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._json: Any = self._UNSET
        self._form: dict[str, str] | None = None

    def json(self) -> Any:
        """The parsed document; raises BodyNotJson."""
        if self._json is self._UNSET:
            try:
                self._json = json.loads(self.raw)
            except (ValueError, RecursionError) as exc:
                self._json = exc
        if isinstance(self._json, Exception):
            raise BodyNotJson(str(self._json))
        return self._json

    def form(self) -> dict[str, str]:
        """Form fields (first value of each name); empty when the body is not a form."""
        if self._form is None:
            text = self.raw.decode("utf-8", errors="replace")
            self._form = {}
            for name, value in parse_qsl(text, keep_blank_values=True):
                self._form.setdefault(name, value)
        return self._form


def json_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901 lookup; None when the path does not exist. Array indexes are allowed."""
    if pointer == "":
        return doc
    node = doc
    for raw_token in pointer.split("/")[1:]:
        token = raw_token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            if token not in node:
                return None
            node = node[token]
        elif isinstance(node, list):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                return None
            index = int(token)
            if index >= len(node):
                return None
            node = node[index]
        else:
            return None
    return node


def pointer_value(doc: Any, pointer: str | Pointer) -> Any:
    """The value a manifest's pointer names: the JSON value, or one part of a string."""
    if isinstance(pointer, str):
        return json_pointer(doc, pointer)
    found = json_pointer(doc, pointer.path)
    if not isinstance(found, str):
        return None
    parts = found.split(pointer.split)
    if not -len(parts) <= pointer.part < len(parts):
        return None
    return parts[pointer.part]


def _path(pointer: str | Pointer) -> str:
    return pointer if isinstance(pointer, str) else pointer.path


def _scalar(value: Any) -> str | None:
    """A JSON value usable as an id: a non-empty string or a number (not a bool)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def body_hash(plugin_id: str, instance_id: str, route: str, raw: bytes) -> str:
    h = hashlib.sha256()
    for part in (plugin_id.encode(), instance_id.encode(), route.encode()):
        h.update(part)
        h.update(b"\x00")
    h.update(raw)
    return h.hexdigest()


def provider_delivery_id(
    route: Route, plugin_id: str, instance_id: str, headers: Mapping[str, str], body: Body
) -> str:
    """The dedup key's third column: header, else JSON pointer, else fallback header, else the
    body hash.

    Raises BadDeliveryId when the value found is not usable (see :func:`text`): hashing the
    body instead would make an id the provider meant as one event into several.
    """
    if not route.dedup_body:
        found = _header_id(route.dedup_headers, headers)
        if found is None and route.dedup_json_pointer is not None:
            found = _pointer_id(route, route.dedup_json_pointer, _document(route, body))
        if found is None:
            found = _header_id(route.dedup_fallback_headers, headers)
        if found is not None:
            return found
    return body_hash(plugin_id, instance_id, route.name, body.raw)


def _document(route: Route, body: Body) -> Any:
    """The JSON the dedup pointer reads. A body that is not JSON is a 400 for a route that
    always reads its id there; with a ``when`` it is only an event the condition misses, so
    the fallbacks apply (the pointer of a route that also takes other events never refuses)."""
    try:
        return body.json()
    except BodyNotJson:
        if route.dedup_when is None:
            raise
        return None


def _header_id(names: tuple[str, ...], headers: Mapping[str, str]) -> str | None:
    for name in names:
        raw = headers.get(name, "")
        if raw.strip():
            value = header_text(raw)
            if value is None:
                raise BadDeliveryId(name)
            return value
    return None


def _pointer_id(route: Route, pointer: str | Pointer, doc: Any) -> str | None:
    when = route.dedup_when
    if when is not None and _scalar(json_pointer(doc, when.pointer)) not in when.equals:
        return None
    found = _scalar(pointer_value(doc, pointer))
    if found is None:
        return None
    if route.dedup_scope is not None:
        scope = _scalar(pointer_value(doc, route.dedup_scope))
        if scope is None:  # unscoped, two senders' equal ids would be one delivery
            return None
        found = f"{scope}:{found}"
    if text(found) is None:
        raise BadDeliveryId(_path(pointer))
    return found


def webhook_id(plugin_id: str, instance_id: str, provider_id: str) -> str:
    """The id sent to targets: derived from the dedup key, so stable across retry and redrive."""
    digest = hashlib.sha256(
        b"\x00".join((plugin_id.encode(), instance_id.encode(), provider_id.encode()))
    ).hexdigest()
    return "msg_" + digest[:32]


def conversation_id(route: Route, headers: Mapping[str, str], body: Body) -> str | None:
    """Best effort: the first declared header, JSON pointer or form field with a usable value,
    one that does not end in an avoided suffix if there is one."""
    avoided: str | None = None
    for value in _conversation_candidates(route, headers, body):
        if not value.endswith(route.conversation_avoid_suffixes):
            return value[:256]
        avoided = avoided or value[:256]
    return avoided


def _conversation_candidates(route: Route, headers: Mapping[str, str], body: Body) -> Iterator[str]:
    for name in route.conversation_headers:
        value = header_text(headers.get(name, ""))
        if value:
            yield value
    if route.conversation_pointers:
        try:
            doc = body.json()
        except BodyNotJson:
            doc = None
        for pointer in route.conversation_pointers:
            found = _scalar(pointer_value(doc, pointer))
            if found is not None and text(found) is not None:
                yield found
    for name in route.conversation_form_fields:
        value = text(body.form().get(name, "").strip())
        if value:
            yield value


def event_type(route: Route, headers: Mapping[str, str], body: Body) -> str | None:
    """The kind of event, where the route says: the first declared header, JSON pointer, key of
    the top-level object or form field with a value that is text of at most
    MAX_EVENT_TYPE_CHARS characters. The body's JSON is the parse dedup and conversation share."""
    source = route.event_type
    if source is None:
        return None
    for name in source.headers:
        found = header_text(headers.get(name, ""))
        if found and len(found) <= MAX_EVENT_TYPE_CHARS:
            return found
    if source.json_pointers or source.json_keys:
        try:
            doc = body.json()
        except BodyNotJson:
            doc = None
        for pointer in source.json_pointers:
            found = _scalar(json_pointer(doc, pointer))
            if found is not None and len(found) <= MAX_EVENT_TYPE_CHARS and is_text(found):
                return found
        if isinstance(doc, dict):
            for key in source.json_keys:
                if key in doc:
                    return key
    for name in source.form_fields:
        found = body.form().get(name, "").strip()
        if found and len(found) <= MAX_EVENT_TYPE_CHARS and is_text(found):
            return found
    return None


@functools.lru_cache(maxsize=1024)
def _is_credential(name: str) -> bool:
    return name in _SECRET_HEADERS or any(word in name for word in _SECRET_WORDS)


# Words that make a query parameter a credential when the name is made of them (``sig``,
# ``oauth_code``, ``session-id``), though inside another word they mean nothing (``design``).
_SECRET_QUERY_WORDS = frozenset({"sig", "auth", "code", "session", "sid", "pass", "pwd"})
_WORD_SEPARATORS = re.compile(r"[^a-z0-9]+")


def _is_credential_parameter(lowered: str) -> bool:
    if _is_credential(lowered) or "token" in lowered or "key" in lowered:
        return True
    return any(word in _SECRET_QUERY_WORDS for word in _WORD_SEPARATORS.split(lowered))


def redact_query(query: str) -> str:
    """A query string with the values of credential-looking parameters replaced."""
    if not query:
        return query
    parts = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        secret = eq and _is_credential_parameter(unquote_plus(name).lower())
        parts.append(f"{name}={REDACTED}" if secret else pair)
    return "&".join(parts)


def redact_headers(
    headers: Mapping[str, str],
    verify_header: str | None = None,
    limit: int | None = None,
    keep: Collection[str] = (),
) -> str:
    """The headers as JSON with every credential replaced by a marker.

    ``verify_header`` is the route's own signature or secret header, whatever its name; the
    names in ``keep`` (lower-case) keep their values whatever they look like. With a
    ``limit``, headers are kept in the order received while names and values together fit in
    that many bytes (one character is one byte as the edge decodes them); a header that does
    not fit is left out, so one huge junk header cannot crowd out the others or fill the disk.
    """
    secret = (verify_header or "").lower()
    room = limit
    safe = {}
    for name, value in headers.items():
        redacted = name not in keep and (name == secret or _is_credential(name))
        kept = REDACTED if redacted else value
        if room is not None:
            size = len(name) + len(kept)
            if size > room:
                continue
            room -= size
        safe[name] = kept
    return json.dumps(safe, separators=(",", ":"))


def stored_body(route: Route, body: Body) -> bytes:
    """The body as it is stored: the raw bytes, unless the route names JSON values that are
    credentials (Evolution puts its API key in every webhook body); then the document with
    those values replaced by the marker, serialized again.

    Only for routes whose verification does not cover the body (Evolution's is a shared-secret
    header), so nothing downstream needs the exact bytes; a float may be respelled (``1.10`` as
    ``1.1``), never changed in value. Verification and dedup already ran on the raw bytes.
    """
    if not route.redact_pointers:
        return body.raw
    try:
        doc = json.loads(body.raw)  # a copy of its own: Body.json() is shared with other readers
    except (ValueError, RecursionError):
        return body.raw  # not JSON: no pointer names anything in it
    if not any([_redact(doc, pointer) for pointer in route.redact_pointers]):  # all of them
        return body.raw
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate escape ("\ud800") is only JSON as an escape
        return json.dumps(doc, separators=(",", ":")).encode()


def _redact(doc: Any, pointer: str) -> bool:
    """Replace the value ``pointer`` names with the marker; whether there was one to replace."""
    parent_pointer, _, raw_token = pointer.rpartition("/")
    parent = json_pointer(doc, parent_pointer)
    token = raw_token.replace("~1", "/").replace("~0", "~")
    if isinstance(parent, dict) and parent.get(token) is not None:
        parent[token] = REDACTED
        return True
    if isinstance(parent, list) and token.isdigit() and int(token) < len(parent):
        parent[int(token)] = REDACTED
        return True
    return False

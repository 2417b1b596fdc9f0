"""Provider presets as data: manifest loading and validation, and the registry.

A plugin is a declarative manifest (TOML, or JSON with the same structure). The built-ins live in
``ingress_box/manifests``; ``INGRESS_BOX_PLUGINS_DIR`` adds the ``*.toml`` and ``*.json`` files of
one folder. Validation is strict so a typo fails start-up instead of silently accepting forgeries:
unknown keys and wrong types are errors, and every :class:`ManifestError` names the file and the
dotted field (``routes.events.verify.tolerance_seconds``)::

    id = "chatwoot"                  # ^[a-z0-9][a-z0-9_-]{0,63}$
    name = "Chatwoot"
    description = "..."              # optional
    handler = "forward"              # optional: a handler name or "package.module:function"
    secret_from_provider = "..."     # optional: the provider issues the secret, found there
    setup = ["Paste {url} ..."]      # optional: what to paste where; {url} is the ingress URL

    [routes.events]                  # route names follow the id pattern
    methods = ["POST"]               # optional: None means any method
    max_body_bytes = 262144          # optional: absent means the process default; 0 = empty only
    ack = { status = 202 }           # optional: status (2xx), body (string), content_type
    dedup = { header = "X-Chatwoot-Delivery" }   # or headers = [...], json_pointer = "/id",
                                                 # or body = true; the body hash is the fallback
    conversation = { json_pointers = ["/conversation/id"] }  # and/or headers, form_fields
    challenge = { }                  # optional: Meta-style GET handshake (param names overridable)
    redact_json_pointers = ["/apikey"]   # optional: JSON body values replaced before storing
    event_type = { headers = ["X-GitHub-Event"] }  # optional: and/or json_pointers, form_fields,
                                     # json_keys (the first of these top-level keys present)

    [routes.events.mapping]          # optional: learn conversation mappings from events
    chat = { json_pointers = ["/conversation/contact_inbox/source_id"] }  # and/or headers, ...
    session = { headers = ["X-Session"] }   # optional: used when the instance has no session

    [routes.events.verify]           # required; see ingress_box.signatures for the schemes
    scheme = "hmac"
    header = "X-Chatwoot-Signature"
    prefix = "sha256="
    template = "{timestamp}.{rawBody}"
    timestamp_header = "X-Chatwoot-Timestamp"

An unsigned route must say so: ``scheme = "none"`` with ``allow_unsigned = true``.

Values built from more than one place
-------------------------------------
Where a JSON pointer is accepted in ``dedup.json_pointer`` and ``conversation.json_pointers``, a
table may stand for it that keeps one part of the string found: ``{ pointer = "/payload/id",
split = "_", part = 2 }`` is ``"c"`` for ``"a_b_c_d"`` (``part`` counts from 0, a negative one
from the end; fewer parts means no value). ``dedup`` also takes:

    scope_json_pointer = "/session"   # the id is "<scope>:<value>"; no scope means no value, so
                                      # two senders' equal ids never meet in one dedup key
    when = { json_pointer = "/event", equals = ["message"] }  # the pointer applies only then
    fallback_headers = ["X-Request-Id"]  # tried after the pointer (``headers`` come before it)

and ``conversation`` takes ``avoid_suffixes = ["@lid"]``: a value ending so is used only when no
other header, pointer or field has one.

Adding a scheme that needs code
-------------------------------
Manifests pick a scheme by name from :data:`ingress_box.signatures.SCHEMES`. To add one, write
(in ``ingress_box/schemes/``) a frozen spec dataclass with ``scheme`` and ``secret_kind``
attributes, a parse function ``(ManifestTable) -> spec`` that reads and checks its params (call
``table.only(...)`` so unknown keys fail), and a pure verify function
``(spec, secrets, SignedRequest, now) -> Verdict`` that passes when any secret verifies; then
register it in ``SCHEMES`` in ``signatures.py``::

    SCHEMES["acme"] = Scheme(parse=parse_acme, verify=verify_acme)

``verify()`` already answers ``no_secret`` for an empty secret list before calling yours.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, ManifestError
from .signatures import ManifestTable, VerifySpec, parse_verify_spec

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_METHOD = re.compile(r"[A-Z]{1,20}")
_HANDLER = re.compile(r"[a-z][a-z0-9_-]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_BAD_ESCAPE = re.compile(r"~(?![01])")  # RFC 6901: "~" only as "~0" or "~1"


@dataclass(frozen=True)
class Ack:
    """What a verified request (new or duplicate) is answered with."""

    status: int = 202
    body: bytes | None = None  # None: the pipeline's default JSON body
    content_type: str = "application/json"


@dataclass(frozen=True)
class Challenge:
    """A GET handshake that echoes ``challenge_param`` when the verify token matches."""

    mode_param: str = "hub.mode"
    mode_value: str = "subscribe"
    token_param: str = "hub.verify_token"
    challenge_param: str = "hub.challenge"


@dataclass(frozen=True)
class Pointer:
    """A JSON pointer to a string of which only part ``part`` split on ``split`` is the value."""

    path: str
    split: str
    part: int


@dataclass(frozen=True)
class Condition:
    """Holds when the value at ``pointer`` is one of ``equals``."""

    pointer: str
    equals: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """One endpoint of a plugin.

    Delivery id: the first present, non-blank ``dedup_headers``, then ``dedup_json_pointer``
    (scoped by ``dedup_scope``, when ``dedup_when`` holds), then ``dedup_fallback_headers``, then
    the body hash; ``dedup_body`` means the body hash always. Conversation: headers, then JSON
    pointers, then form fields, first found wins, except that a value ending in one of
    ``conversation_avoid_suffixes`` is taken only when nothing else is found.
    """

    name: str
    verify: VerifySpec
    dedup_headers: tuple[str, ...]
    dedup_json_pointer: str | Pointer | None
    dedup_body: bool
    conversation_headers: tuple[str, ...]
    conversation_pointers: tuple[str | Pointer, ...]
    conversation_form_fields: tuple[str, ...]
    challenge: Challenge | None
    max_body_bytes: int | None
    ack: Ack
    methods: tuple[str, ...] | None
    mapping: MappingSpec | None = None
    dedup_scope: str | Pointer | None = None
    dedup_when: Condition | None = None
    dedup_fallback_headers: tuple[str, ...] = ()
    conversation_avoid_suffixes: tuple[str, ...] = ()
    redact_pointers: tuple[str, ...] = ()  # body values that are credentials: never stored
    event_type: EventTypeSource | None = None


@dataclass(frozen=True)
class FieldSource:
    """Where a value is in a request: headers, then JSON pointers, then form fields."""

    headers: tuple[str, ...] = ()
    json_pointers: tuple[str, ...] = ()
    form_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventTypeSource(FieldSource):
    """Where a route's events say what kind they are; ``json_keys`` (tried after the JSON
    pointers) names kinds by which of these keys the top-level object has (Telegram's
    ``message``, ``callback_query``, ...)."""

    json_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class MappingSpec:
    """Where a route's events carry their chat (and session), to learn conversation mappings."""

    chat: FieldSource
    session: FieldSource | None = None  # None: only the instance's session


@dataclass(frozen=True)
class Plugin:
    id: str
    name: str
    description: str
    routes: Mapping[str, Route]
    handler: str = "forward"
    source: str = ""  # the manifest file it came from, for error messages and the admin API
    # Where the operator finds the secret when the provider issues it (Meta's app secret,
    # Twilio's auth token, ...); empty when the box's generated secret is given to the provider.
    secret_from_provider: str = ""
    # The operator's onboarding lines: where the URL goes and which secret; ``{url}`` in them is
    # the instance's ingress URL.
    setup: tuple[str, ...] = ()

    @property
    def secret_issued_by_provider(self) -> bool:
        return bool(self.secret_from_provider)

    def setup_for(self, url: str) -> list[str]:
        """The onboarding lines with ``url`` in them (a plain replace: the lines hold braces)."""
        return [line.replace("{url}", url) for line in self.setup]


class Registry:
    """The loaded plugins, by id."""

    def __init__(self, plugins: Mapping[str, Plugin]) -> None:
        self._plugins = dict(plugins)

    def get(self, plugin_id: str) -> Plugin | None:
        return self._plugins.get(plugin_id)

    def all(self) -> list[Plugin]:
        return [self._plugins[key] for key in sorted(self._plugins)]

    def known(self) -> str:
        """The plugin ids, for an error that names the valid ones."""
        return ", ".join(sorted(self._plugins))


def _check_pointer(t: ManifestTable, key: str, pointer: str) -> None:
    if pointer and not pointer.startswith("/"):
        raise t.error(key, f"JSON pointer {pointer!r} must start with '/' (or be empty)")
    if _BAD_ESCAPE.search(pointer):
        raise t.error(key, f"JSON pointer {pointer!r}: '~' must be followed by 0 or 1")


def _pointers(t: ManifestTable, key: str) -> tuple[str, ...]:
    pointers = t.texts(key)
    for pointer in pointers:
        _check_pointer(t, key, pointer)
    return pointers


# A value is at most 512 characters (extract.MAX_VALUE_CHARS), so it has at most 513 parts.
_MAX_PART = 512


def _pointer_entry(t: ManifestTable, key: str, value: object) -> str | Pointer:
    """A JSON pointer given as a string, or as ``{pointer, split, part}`` to keep one part."""
    if isinstance(value, str):
        _check_pointer(t, key, value)
        return value
    if not isinstance(value, dict):
        raise t.error(key, "must be a JSON pointer or a table {pointer, split, part}")
    entry = ManifestTable(value, t.file, t.path(key))
    entry.only("pointer", "split", "part")
    path = entry.required_text("pointer")
    _check_pointer(entry, "pointer", path)
    split = entry.required_text("split")
    if not split:
        raise entry.error("split", "must not be empty")
    if "part" not in entry.data:
        raise entry.error("part", "is required (0 is the first part, -1 the last)")
    part = entry.integer("part", minimum=-_MAX_PART - 1)
    assert part is not None
    if part > _MAX_PART:
        raise entry.error("part", f"must be <= {_MAX_PART}")
    return Pointer(path, split, part)


def _pointer_entries(t: ManifestTable, key: str) -> tuple[str | Pointer, ...]:
    values = t.data.get(key, [])
    if not isinstance(values, list):
        raise t.error(key, "must be a list of JSON pointers or {pointer, split, part} tables")
    return tuple(_pointer_entry(t, key, value) for value in values)


def _condition(t: ManifestTable | None) -> Condition | None:
    if t is None:
        return None
    t.only("json_pointer", "equals")
    pointer = t.required_text("json_pointer")
    _check_pointer(t, "json_pointer", pointer)
    equals = t.texts("equals")
    if not equals:
        raise t.error("equals", "give at least one value")
    return Condition(pointer, equals)


def _headers(t: ManifestTable, key: str) -> tuple[str, ...]:
    names = t.texts(key)
    for name in names:  # reuse the single-header check so the rule lives in one place
        ManifestTable({key: name}, t.file, t.field).header(key)
    return tuple(name.lower() for name in names)


def _sub(t: ManifestTable, key: str) -> ManifestTable | None:
    return ManifestTable(t.data[key], t.file, t.path(key)) if key in t.data else None


def _ack(t: ManifestTable | None) -> Ack:
    if t is None:
        return Ack()
    t.only("status", "body", "content_type")
    status = t.integer("status", minimum=200)
    if status is not None and status > 299:
        raise t.error("status", "must be a 2xx status")
    body = t.text("body")
    if body is not None and status in (204, 205):
        raise t.error("body", f"a {status} answer has no body")
    return Ack(
        status=status or 202,
        body=None if body is None else body.encode("utf-8"),
        content_type=t.text("content_type") or "application/json",
    )


def _challenge(t: ManifestTable | None) -> Challenge | None:
    if t is None:
        return None
    names = ("mode_param", "mode_value", "token_param", "challenge_param")
    t.only(*names)
    given = {name: t.text(name) for name in names}
    return Challenge(**{name: value for name, value in given.items() if value})


def _field_source(t: ManifestTable | None) -> FieldSource | None:
    if t is None:
        return None
    t.only("headers", "json_pointers", "form_fields")
    source = FieldSource(
        _headers(t, "headers"), _pointers(t, "json_pointers"), t.texts("form_fields")
    )
    if not (source.headers or source.json_pointers or source.form_fields):
        raise t.error("headers", "give at least one of headers, json_pointers, form_fields")
    return source


def _event_type(t: ManifestTable | None) -> EventTypeSource | None:
    if t is None:
        return None
    t.only("headers", "json_pointers", "json_keys", "form_fields")
    source = EventTypeSource(
        _headers(t, "headers"),
        _pointers(t, "json_pointers"),
        t.texts("form_fields"),
        t.texts("json_keys"),
    )
    if not (source.headers or source.json_pointers or source.json_keys or source.form_fields):
        raise t.error(
            "headers", "give at least one of headers, json_pointers, json_keys, form_fields"
        )
    return source


def _mapping(t: ManifestTable | None) -> MappingSpec | None:
    if t is None:
        return None
    t.only("chat", "session")
    chat = _field_source(_sub(t, "chat"))
    if chat is None:
        raise t.error("chat", "is required: where an event carries its chat")
    return MappingSpec(chat, _field_source(_sub(t, "session")))


def _route(name: str, t: ManifestTable) -> Route:
    t.only(
        "methods",
        "max_body_bytes",
        "ack",
        "dedup",
        "conversation",
        "challenge",
        "verify",
        "mapping",
        "redact_json_pointers",
        "event_type",
    )
    if "verify" not in t.data:
        raise t.error(
            "verify",
            'is required (an unsigned route says scheme = "none" with allow_unsigned = true)',
        )
    spec = parse_verify_spec(t.data["verify"], t.file, t.path("verify"))
    methods = None
    if "methods" in t.data:
        methods = tuple(m.upper() for m in t.texts("methods"))
        if not methods or not all(_METHOD.fullmatch(m) for m in methods):
            raise t.error("methods", "must be a non-empty list of HTTP methods")
    dedup = _sub(t, "dedup") or ManifestTable({}, t.file, t.path("dedup"))
    dedup.only(
        "header",
        "headers",
        "json_pointer",
        "body",
        "scope_json_pointer",
        "when",
        "fallback_headers",
    )
    if "header" in dedup.data and "headers" in dedup.data:
        raise dedup.error("headers", "give header or headers, not both")
    single = dedup.header("header")
    headers = (single,) if single else _headers(dedup, "headers")
    pointer = None
    if "json_pointer" in dedup.data:
        pointer = _pointer_entry(dedup, "json_pointer", dedup.data["json_pointer"])
    scope = None
    if "scope_json_pointer" in dedup.data:
        scope = _pointer_entry(dedup, "scope_json_pointer", dedup.data["scope_json_pointer"])
    when = _condition(_sub(dedup, "when"))
    fallback_headers = _headers(dedup, "fallback_headers")
    for key, given in (("scope_json_pointer", scope), ("when", when)):
        if given is not None and pointer is None:
            raise dedup.error(key, "qualifies json_pointer, which is not given")
    body = bool(dedup.flag("body"))
    if body and (headers or pointer is not None or fallback_headers):
        raise dedup.error(
            "body",
            "body = true always uses the body hash: drop header/json_pointer/fallback_headers",
        )
    conversation = _sub(t, "conversation") or ManifestTable({}, t.file, t.path("conversation"))
    conversation.only("headers", "json_pointers", "form_fields", "avoid_suffixes")
    avoid = conversation.texts("avoid_suffixes")
    if not all(avoid):
        raise conversation.error("avoid_suffixes", "must not contain an empty suffix")
    redact = _pointers(t, "redact_json_pointers")
    if "" in redact:
        raise t.error("redact_json_pointers", "the empty pointer is the whole body")
    return Route(
        name=name,
        verify=spec,
        dedup_headers=headers,
        dedup_json_pointer=pointer,
        dedup_body=body,
        conversation_headers=_headers(conversation, "headers"),
        conversation_pointers=_pointer_entries(conversation, "json_pointers"),
        conversation_form_fields=conversation.texts("form_fields"),
        challenge=_challenge(_sub(t, "challenge")),
        max_body_bytes=t.integer("max_body_bytes", minimum=0),
        ack=_ack(_sub(t, "ack")),
        methods=methods,
        mapping=_mapping(_sub(t, "mapping")),
        dedup_scope=scope,
        dedup_when=when,
        dedup_fallback_headers=fallback_headers,
        conversation_avoid_suffixes=avoid,
        redact_pointers=redact,
        event_type=_event_type(_sub(t, "event_type")),
    )


def parse_manifest(data: object, source: str) -> Plugin:
    """Build a Plugin from a decoded manifest; ``source`` names the file in errors."""
    t = ManifestTable(data, source, "")
    t.only("id", "name", "description", "handler", "secret_from_provider", "setup", "routes")
    plugin_id = t.required_text("id")
    if not _ID.fullmatch(plugin_id):
        raise t.error("id", f"{plugin_id!r} must match ^{_ID.pattern}$")
    name = t.required_text("name")
    if not name:
        raise t.error("name", "must not be empty")
    handler = t.text("handler") or "forward"
    if not _HANDLER.fullmatch(handler):
        raise t.error("handler", f"{handler!r} is neither a handler name nor module:function")
    routes_table = _sub(t, "routes")
    if routes_table is None or not routes_table.data:
        raise t.error("routes", "at least one route is required")
    routes: dict[str, Route] = {}
    for route_name, route_table in routes_table.data.items():
        if not _ID.fullmatch(route_name):
            raise routes_table.error(route_name, f"route names must match ^{_ID.pattern}$")
        sub = ManifestTable(route_table, t.file, routes_table.path(route_name))
        routes[route_name] = _route(route_name, sub)
    return Plugin(
        id=plugin_id,
        name=name,
        description=t.text("description") or "",
        routes=MappingProxyType(routes),
        handler=handler,
        source=source,
        secret_from_provider=t.text("secret_from_provider") or "",
        setup=t.texts("setup"),
    )


def _decode(text: str, suffix: str, source: str) -> object:
    try:
        return json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(source, "(document)", f"cannot parse: {exc}") from exc
    except RecursionError as exc:  # both parsers recurse per nesting level
        raise ManifestError(source, "(document)", "cannot parse: nested too deeply") from exc


def load_manifest_file(path: Path) -> Plugin:
    """Read and validate one ``.toml`` or ``.json`` manifest file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(path), "(document)", f"cannot read: {exc}") from exc
    return parse_manifest(_decode(text, path.suffix, str(path)), str(path))


def _builtins() -> list[Plugin]:
    folder = resources.files("ingress_box.manifests")
    names = sorted(e.name for e in folder.iterdir() if e.name.endswith(".toml"))
    return [
        parse_manifest(
            _decode(folder.joinpath(n).read_text("utf-8"), ".toml", f"builtin:{n}"), f"builtin:{n}"
        )
        for n in names
    ]


def load_registry(plugins_dir: Path | None = None) -> Registry:
    """The built-in plugins plus every manifest in ``plugins_dir``; ids must be unique."""
    plugins = {plugin.id: plugin for plugin in _builtins()}
    if plugins_dir is not None:
        if not plugins_dir.is_dir():
            raise ConfigError(f"plugins folder {plugins_dir} is not a directory")
        for path in sorted(plugins_dir.iterdir()):
            # Dotfiles are editor swap/backup files, not manifests.
            if path.suffix not in (".toml", ".json") or path.name.startswith("."):
                continue
            plugin = load_manifest_file(path)
            if plugin.id in plugins:
                taken = plugins[plugin.id].source
                raise ManifestError(str(path), "id", f"{plugin.id!r} is already defined by {taken}")
            plugins[plugin.id] = plugin
    return Registry(plugins)


def _pointer_json(pointer: str | Pointer | None) -> str | dict[str, Any] | None:
    if isinstance(pointer, Pointer):
        return {"pointer": pointer.path, "split": pointer.split, "part": pointer.part}
    return pointer


def plugin_to_json(plugin: Plugin) -> dict[str, Any]:
    """The plugin as ``GET /admin/plugins`` shows it (no secrets live in a plugin)."""
    return {
        "id": plugin.id,
        "name": plugin.name,
        "description": plugin.description,
        "handler": plugin.handler,
        "secret_issued_by_provider": plugin.secret_issued_by_provider,
        "secret_from_provider": plugin.secret_from_provider or None,
        "routes": [
            {
                "name": route.name,
                "scheme": route.verify.scheme,
                "methods": None if route.methods is None else list(route.methods),
                "challenge": route.challenge is not None,
                "max_body_bytes": route.max_body_bytes,
                "dedup": {
                    "headers": list(route.dedup_headers),
                    "json_pointer": _pointer_json(route.dedup_json_pointer),
                    "body": route.dedup_body,
                    "scope_json_pointer": _pointer_json(route.dedup_scope),
                    "when": None
                    if route.dedup_when is None
                    else {
                        "json_pointer": route.dedup_when.pointer,
                        "equals": list(route.dedup_when.equals),
                    },
                    "fallback_headers": list(route.dedup_fallback_headers),
                },
                "redact_json_pointers": list(route.redact_pointers),
                "event_type": None
                if route.event_type is None
                else {
                    "headers": list(route.event_type.headers),
                    "json_pointers": list(route.event_type.json_pointers),
                    "json_keys": list(route.event_type.json_keys),
                    "form_fields": list(route.event_type.form_fields),
                },
                "conversation": {
                    "headers": list(route.conversation_headers),
                    "json_pointers": [_pointer_json(p) for p in route.conversation_pointers],
                    "form_fields": list(route.conversation_form_fields),
                    "avoid_suffixes": list(route.conversation_avoid_suffixes),
                },
            }
            for route in plugin.routes.values()
        ],
    }

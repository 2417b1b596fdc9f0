"""Creating, changing and rotating instances: the checks and secret generation both edges share.

The admin API and the CLI hand this module whatever the operator typed (decoded JSON, or flags)
and get back an :class:`~ingress_box.store.instances.Instance`, or a store op, plus the secrets
to show exactly once. Every rule about what a valid instance is lives here, so the two edges
cannot drift apart. Values arrive as ``object`` because they come from untrusted JSON.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from . import handlers
from .errors import InvalidInput
from .plugins import Plugin, Registry
from .signatures import generate_secret
from .signing import generate_outbound_secret
from .store import instances as store_instances
from .store.instances import INSTANCE_ID, LANE_POLICIES, Instance
from .values import check_document, check_unicode

MAX_TEXT = 4096  # no operator-given string needs more; keeps junk out of the database
# A config is a few settings of a handler; deeper or bigger is junk, and Python's JSON and
# dataclass code recurse, so a document nested hundreds deep fails wherever it is read.
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_BYTES = 64 * 1024

CREATE_FIELDS = frozenset(
    {
        "target_url",
        "secret",
        "verify_token",
        "session",
        "config",
        "lane_policy",
        "handler",
        "enabled",
    }
)
PATCH_FIELDS = frozenset(
    {"target_url", "session", "config", "lane_policy", "handler", "verify_token", "enabled"}
)


def _text(name: str, value: object, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{name} must be at most {MAX_TEXT} characters")
    return check_unicode(name, value)


def check_text(name: str, value: object) -> str:
    """``value`` as operator-given text: a non-empty string of at most MAX_TEXT characters."""
    text = _text(name, value)
    assert text is not None
    return text


def check_url(name: str, value: object) -> str:
    """An ``http(s)://`` URL with a host, as an instance's target or a bridge's API base."""
    url = check_text(name, value)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidInput(f"{name} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise InvalidInput(f"{name} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput(f"{name} must be an http:// or https:// URL with a host")
    return url


def _target_url(value: object) -> str | None:
    return None if value is None else check_url("target_url", value)


def _check(name: str, value: object) -> Any:
    """One field's value, validated (the field name is known to be allowed)."""
    if name == "target_url":
        return _target_url(value)
    if name in ("session", "verify_token"):
        return _text(name, value, nullable=True)
    if name == "secret":
        return _text(name, value)
    if name == "config":
        return check_document(name, value, MAX_CONFIG_DEPTH, MAX_CONFIG_BYTES)
    if name == "lane_policy":
        if value not in LANE_POLICIES:
            raise InvalidInput(f"lane_policy must be one of {', '.join(LANE_POLICIES)}")
        return value
    if name == "enabled":
        if not isinstance(value, bool):
            raise InvalidInput("enabled must be true or false")
        return value
    raise AssertionError(name)  # pragma: no cover - callers check the name first


def allowed_handlers(registry: Registry) -> frozenset[str]:
    """The registered handler names and the handlers the loaded plugins declare.

    Never any importable callable: an instance's handler runs with every body it receives, so
    whoever holds the admin token must not be able to point it at ``builtins:print`` or worse.
    """
    return handlers.registered() | {p.handler for p in registry.all()}


def _handler(registry: Registry, value: object) -> str:
    handler = _text("handler", value)
    allowed = allowed_handlers(registry)
    if handler is None or handler not in allowed:
        known = ", ".join(sorted(allowed))
        raise InvalidInput(
            f"handler must be a registered handler or one a plugin declares ({known})"
        )
    return handler


def _fields(
    registry: Registry, given: Mapping[str, object], allowed: frozenset[str], hint: str = ""
) -> dict[str, Any]:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}{hint}")
    return {
        name: _handler(registry, value) if name == "handler" else _check(name, value)
        for name, value in given.items()
    }


def plugin_of(registry: Registry, plugin_id: object) -> Plugin:
    if not isinstance(plugin_id, str) or not plugin_id:
        raise InvalidInput("plugin must be a non-empty string")
    plugin = registry.get(plugin_id)
    if plugin is None:
        raise InvalidInput(f"unknown plugin {plugin_id!r} (known: {registry.known()})")
    return plugin


def secret_needed(plugin: Plugin) -> str:
    """Why a generated secret is no use for ``plugin``, for a refusal or a warning."""
    return f"{plugin.id}'s secret is issued by the provider ({plugin.secret_from_provider})"


def warnings(plugin: Plugin, inst: Instance, secret_given: bool) -> list[str]:
    """What a new instance will not do as it is, though it is valid."""
    found = []
    if plugin.secret_issued_by_provider and not secret_given:
        found.append(
            secret_needed(plugin) + ": the generated one never verifies; rotate-secret to it"
        )
    if inst.handler == "forward" and inst.target_url is None:
        found.append("no target_url: every delivery fails until one is set")
    return found


def _fresh_secret(plugin: Plugin) -> str:
    # An instance has one secret for all routes; the first route's scheme decides its form.
    first = next(iter(plugin.routes.values()))
    return generate_secret(first.verify)


def new_instance(
    registry: Registry,
    plugin_id: object,
    instance_id: object,
    fields: Mapping[str, object],
    now: float,
) -> tuple[Instance, dict[str, str]]:
    """A valid new Instance and its plain secrets (generated where not given), to show once."""
    plugin = plugin_of(registry, plugin_id)
    if not isinstance(instance_id, str) or not INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInput(f"instance must match ^{INSTANCE_ID.pattern}$")
    values = _fields(registry, fields, CREATE_FIELDS)
    shown = {
        "secret": values.pop("secret", None) or _fresh_secret(plugin),
        "verify_token": values.pop("verify_token", None) or secrets.token_urlsafe(24),
        "outbound_secret": generate_outbound_secret(),
    }
    values.setdefault("handler", plugin.handler)
    values.update(shown)
    inst = Instance(
        plugin_id=plugin.id, instance_id=instance_id, created_at=now, updated_at=now, **values
    )
    return inst, shown


def changes(registry: Registry, fields: Mapping[str, object]) -> dict[str, Any]:
    """Validated PATCH changes (Instance field names); secrets change only through rotation."""
    return _fields(registry, fields, PATCH_FIELDS, hint=" (secrets change through rotate-secret)")


def rotation(
    registry: Registry, inst: Instance, secret: object, grace_seconds: object, now: float
) -> tuple[Any, str]:
    """A store op that rotates the secret of ``inst``, and the new secret (generated when None)."""
    if secret is None:
        plugin = registry.get(inst.plugin_id)
        if plugin is None:
            raise InvalidInput(f"plugin {inst.plugin_id!r} is not loaded: give the new secret")
        new_secret = _fresh_secret(plugin)
    else:
        new_secret = _check("secret", secret)
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, (int, float))
        or not math.isfinite(grace_seconds)
        or grace_seconds < 0
    ):
        raise InvalidInput("grace_seconds must be a number >= 0")
    op = store_instances.rotate(
        inst.plugin_id, inst.instance_id, new_secret, float(grace_seconds), now
    )
    return op, new_secret


def ingress_urls(registry: Registry, inst: Instance, base_url: str) -> dict[str, str]:
    """The URL of each route of the instance, by route name (empty if its plugin is gone)."""
    plugin = registry.get(inst.plugin_id)
    routes = plugin.routes if plugin is not None else {}
    base = base_url.rstrip("/")
    return {
        name: f"{base}/ingress/{quote(inst.plugin_id)}/{quote(inst.instance_id)}/{name}"
        for name in routes
    }


def created_json(
    registry: Registry,
    inst: Instance,
    shown: Mapping[str, str],
    base_url: str,
    *,
    secret_given: bool,
) -> dict[str, Any]:
    """The answer to a create: the masked instance, what is shown this once, and the
    :func:`warnings`."""
    urls = ingress_urls(registry, inst, base_url)
    plugin = registry.get(inst.plugin_id)
    warned = [] if plugin is None else warnings(plugin, inst, secret_given)
    return {
        "plugin": inst.plugin_id,
        "instance": inst.instance_id,
        **inst.to_json(),
        **shown,
        "ingress_url": next(iter(urls.values()), None),
        "ingress_urls": urls,
        "warnings": warned,
    }

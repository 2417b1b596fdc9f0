"""Schemes configured entirely by manifest params: ``hmac`` (alias ``hmac-sha256``),
``shared-secret`` and ``none``.

``hmac`` covers most providers (GitHub, Meta, Chatwoot, "generic"): a header carries an HMAC of a
template over the raw body, optionally with a timestamp and an id header mixed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote_plus

from .base import (
    DEFAULT_TOLERANCE_SECONDS,
    OK,
    ManifestTable,
    SignedRequest,
    Verdict,
    fail,
    fresh,
    header_bytes,
    matches,
    read_timestamp,
    utf8,
)

DIGESTS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
_TOKEN = re.compile(r"\{(rawBody|timestamp|id)\}")  # one capture group: split() alternates
_ANY_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# --- hmac -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HmacSpec:
    """A header holding the HMAC of ``template`` rendered over the raw body."""

    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    template: str = "{rawBody}"
    timestamp_header: str | None = None
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    id_header: str | None = None
    multiple: bool = False
    # A second form the same header may carry, told apart by its prefix (e.g. one that also
    # signs the delivery id). Its digest differs, so neither form's signature passes for the
    # other's: a body-only signature can never be replayed as one that covers an id, and back.
    variant: HmacSpec | None = None
    # A query parameter that may carry the secret itself, for a sender that signs only some of
    # its webhooks to this URL (Chatwoot: account webhooks, but no API-inbox one before 4.13).
    url_secret_param: str | None = None
    scheme: str = field(default="hmac", init=False)
    secret_kind: str = field(default="text", init=False)


def render_template(template: str, body: bytes, timestamp: str, msg_id: str) -> bytes:
    """The signed bytes: tokens replaced in one pass over the template, so the body is never
    scanned and a body holding ``{timestamp}``, ``$&`` or ``$1`` is signed verbatim."""
    values = {"rawBody": body, "timestamp": header_bytes(timestamp), "id": header_bytes(msg_id)}
    pieces = _TOKEN.split(template)
    return b"".join(values[p] if i % 2 else utf8(p) for i, p in enumerate(pieces))


def parse_hmac(t: ManifestTable) -> HmacSpec:
    t.only(
        "scheme",
        "header",
        "algorithm",
        "encoding",
        "prefix",
        "template",
        "timestamp_header",
        "tolerance_seconds",
        "id_header",
        "multiple",
        "variant",
        "url_secret_param",
    )
    algorithm = t.choice("algorithm", tuple(DIGESTS), "sha256")
    if t.data.get("scheme") == "hmac-sha256" and algorithm != "sha256":
        raise t.error("algorithm", "scheme hmac-sha256 means sha256")
    template = t.text("template") or "{rawBody}"
    timestamp_header = t.header("timestamp_header")
    id_header = t.header("id_header")
    tolerance = t.integer("tolerance_seconds", minimum=1)
    if tolerance is not None and timestamp_header is None:
        raise t.error("tolerance_seconds", "needs timestamp_header")
    tokens = set(_ANY_TOKEN.findall(template))
    if unknown := tokens - {"rawBody", "timestamp", "id"}:
        raise t.error("template", f"unknown token {{{sorted(unknown)[0]}}}")
    # A template without the body would sign headers only: anyone could swap the payload.
    if "rawBody" not in tokens:
        raise t.error("template", "must include {rawBody}")
    for token, header in (("timestamp", timestamp_header), ("id", id_header)):
        if token in tokens and header is None:
            raise t.error("template", f"uses {{{token}}} but {token}_header is not declared")
    spec = HmacSpec(
        header=t.required_header("header"),
        algorithm=algorithm,
        encoding=t.choice("encoding", ("hex", "base64"), "hex"),
        prefix=t.text("prefix") or "",
        template=template,
        timestamp_header=timestamp_header,
        tolerance_seconds=tolerance or DEFAULT_TOLERANCE_SECONDS,
        id_header=id_header,
        multiple=bool(t.flag("multiple")),
        url_secret_param=_query_name(t, "url_secret_param"),
    )
    if "variant" not in t.data:
        return spec
    return replace(spec, variant=_parse_variant(t, spec))


def _parse_variant(t: ManifestTable, main: HmacSpec) -> HmacSpec:
    table = ManifestTable(t.data["variant"], t.file, t.path("variant"))
    if any(key in table.data for key in ("header", "variant", "scheme", "url_secret_param")):
        raise t.error(
            "variant",
            "takes neither header, scheme, variant nor url_secret_param: it is the same header",
        )
    variant = parse_hmac(
        ManifestTable({"header": main.header, **table.data}, t.file, t.path("variant"))
    )
    # Which form a request uses is read from its prefix: neither may start the other.
    if variant.prefix.startswith(main.prefix) or main.prefix.startswith(variant.prefix):
        raise t.error("variant", "needs a prefix that does not overlap the main form's")
    if variant.algorithm == main.algorithm:
        raise t.error("variant", "needs an algorithm other than the main form's")
    return variant


def _query_name(t: ManifestTable, key: str) -> str | None:
    name = t.text(key)
    if name is not None and not _QUERY_NAME.fullmatch(name):
        raise t.error(key, f"{name!r} must be a query parameter name of A-Z a-z 0-9 _ . -")
    return name


def verify_hmac(spec: HmacSpec, secrets: Sequence[str], req: SignedRequest, now: float) -> Verdict:
    """The signature; failing that, the URL's secret parameter where the spec names one.

    The URL secret counts whether or not a signature header came with it: a forger could drop
    the header anyway, and a sender signing with a key of its own (Chatwoot 4.13's API inbox
    signs with the inbox's secret, not the account webhook's) must not lock out its URL.
    """
    verdict = _verify_signature(spec, secrets, req, now)
    if verdict.ok or spec.url_secret_param is None:
        return verdict
    given = _query_value(req.url, spec.url_secret_param)
    if given is None:
        return verdict
    return OK if matches(utf8(given), [utf8(s) for s in secrets]) else fail("bad_signature")


def _query_value(url: str, name: str) -> str | None:
    """The first value of query parameter ``name``, percent-decoded; None when it is absent."""
    # Split by hand: urlsplit raises on a hostile Host header ("[") that the URL was built from.
    for pair in url.partition("?")[2].split("&"):
        key, eq, value = pair.partition("=")
        if eq and unquote_plus(key) == name:
            return unquote_plus(value)
    return None


def _verify_signature(
    spec: HmacSpec, secrets: Sequence[str], req: SignedRequest, now: float
) -> Verdict:
    variant = spec.variant
    if variant is not None and req.headers.get(spec.header, "").startswith(variant.prefix):
        return _verify_signature(variant, secrets, req, now)
    timestamp: int | None = None
    ts_value = id_value = ""
    if spec.timestamp_header is not None:
        ts_value = req.headers.get(spec.timestamp_header, "")
        parsed = read_timestamp(ts_value)
        if isinstance(parsed, str):
            return fail(parsed)
        timestamp = parsed
    if spec.id_header is not None:
        id_value = req.headers.get(spec.id_header, "")
        if not id_value:
            return fail("missing_id")
        if "\n" in id_value or "\r" in id_value:  # no server passes one; the template splits on it
            return fail("bad_id")
    provided = req.headers.get(spec.header, "")
    if not provided:
        return fail("missing_signature")
    raw = [c for c in re.split(r"[,\s]+", provided) if c] if spec.multiple else [provided]
    candidates = [header_bytes(c[len(spec.prefix) :]) for c in raw if c.startswith(spec.prefix)]
    message = render_template(spec.template, req.body, ts_value, id_value)
    for secret in secrets:
        mac = hmac.new(utf8(secret), message, DIGESTS[spec.algorithm]).digest()
        expected = mac.hex().encode() if spec.encoding == "hex" else base64.b64encode(mac)
        if matches(expected, candidates):
            break
    else:
        return fail("bad_signature")
    if timestamp is not None and not fresh(timestamp, now, spec.tolerance_seconds):
        return fail("stale_timestamp")
    return OK


# --- shared-secret --------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedSecretSpec:
    """A header whose value is the secret itself (Telegram's secret_token)."""

    header: str
    scheme: str = field(default="shared-secret", init=False)
    secret_kind: str = field(default="text", init=False)


def parse_shared(t: ManifestTable) -> SharedSecretSpec:
    t.only("scheme", "header")
    return SharedSecretSpec(header=t.required_header("header"))


def verify_shared(
    spec: SharedSecretSpec, secrets: Sequence[str], req: SignedRequest, now: float
) -> Verdict:
    provided = req.headers.get(spec.header, "")
    if not provided:
        return fail("missing_signature")
    ok = matches(header_bytes(provided), [utf8(s) for s in secrets])
    return OK if ok else fail("bad_signature")


# --- none -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoneSpec:
    """No verification: passes only when the manifest explicitly allows unsigned requests."""

    allow_unsigned: bool = False
    scheme: str = field(default="none", init=False)
    secret_kind: str = field(default="text", init=False)


def parse_none(t: ManifestTable) -> NoneSpec:
    t.only("scheme", "allow_unsigned")
    if t.flag("allow_unsigned") is not True:
        raise t.error("allow_unsigned", 'scheme "none" needs allow_unsigned = true')
    return NoneSpec(allow_unsigned=True)


def verify_none(spec: NoneSpec, secrets: Sequence[str], req: SignedRequest, now: float) -> Verdict:
    return OK if spec.allow_unsigned else fail("unsigned_not_allowed")

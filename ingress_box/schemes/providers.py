"""Schemes whose wire format a provider or a spec defines: ``standard-webhooks`` (and Svix),
``stripe`` and ``twilio``. Each was checked against the provider's own library in the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

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

# --- standard-webhooks ----------------------------------------------------------------------


@dataclass(frozen=True)
class StandardWebhooksSpec:
    """webhook-id/-timestamp/-signature (or svix-*), HMAC-SHA256 of "{id}.{timestamp}.{body}"."""

    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    scheme: str = field(default="standard-webhooks", init=False)
    secret_kind: str = field(default="whsec", init=False)


def parse_standard(t: ManifestTable) -> StandardWebhooksSpec:
    t.only("scheme", "tolerance_seconds")
    return StandardWebhooksSpec(t.integer("tolerance_seconds", 1) or DEFAULT_TOLERANCE_SECONDS)


def whsec_key(secret: str) -> bytes:
    """The HMAC key of a ``[v1,]whsec_<base64>`` secret; empty when there is none to use."""
    text = secret.removeprefix("v1,").removeprefix("whsec_")
    try:  # senders often drop the base64 padding
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def verify_standard(
    spec: StandardWebhooksSpec, secrets: Sequence[str], req: SignedRequest, now: float
) -> Verdict:
    keys = [key for key in map(whsec_key, secrets) if key]
    if not keys:  # "whsec_" or "v1,whsec_" alone is an empty key: fail closed
        return fail("no_secret")
    # Svix sends the same three headers under its own prefix.
    prefix = "webhook-" if "webhook-signature" in req.headers else "svix-"
    signatures = req.headers.get(prefix + "signature", "")
    msg_id = req.headers.get(prefix + "id", "")
    ts_value = req.headers.get(prefix + "timestamp", "")
    if not signatures:
        return fail("missing_signature")
    if not msg_id:
        return fail("missing_id")
    timestamp = read_timestamp(ts_value)
    if isinstance(timestamp, str):
        return fail(timestamp)
    candidates = []
    for item in signatures.split():
        version, _, value = item.partition(",")
        if version == "v1":  # other versions (e.g. asymmetric v1a) are not ours to check
            try:
                candidates.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
    message = b".".join((header_bytes(msg_id), header_bytes(ts_value), req.body))
    if not any(matches(hmac.new(k, message, hashlib.sha256).digest(), candidates) for k in keys):
        return fail("bad_signature")
    return OK if fresh(timestamp, now, spec.tolerance_seconds) else fail("stale_timestamp")


# --- stripe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripeSpec:
    """Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">[,v1=...]."""

    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    header: str = "stripe-signature"
    scheme: str = field(default="stripe", init=False)
    secret_kind: str = field(default="text", init=False)


def parse_stripe(t: ManifestTable) -> StripeSpec:
    t.only("scheme", "tolerance_seconds")
    return StripeSpec(t.integer("tolerance_seconds", 1) or DEFAULT_TOLERANCE_SECONDS)


def verify_stripe(
    spec: StripeSpec, secrets: Sequence[str], req: SignedRequest, now: float
) -> Verdict:
    provided = req.headers.get(spec.header, "")
    if not provided:
        return fail("missing_signature")
    t_value: str | None = None
    candidates: list[bytes] = []
    for item in provided.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and t_value is None:
            t_value = value
        elif key == "v1":  # v0 (test-mode legacy) and unknown schemes are ignored, as Stripe does
            candidates.append(header_bytes(value))
    timestamp = read_timestamp(t_value)
    if isinstance(timestamp, str):
        return fail(timestamp)
    if not candidates:
        return fail("missing_signature")
    message = str(timestamp).encode() + b"." + req.body
    expected = (hmac.new(utf8(s), message, hashlib.sha256).hexdigest().encode() for s in secrets)
    if not any(matches(e, candidates) for e in expected):
        return fail("bad_signature")
    return OK if fresh(timestamp, now, spec.tolerance_seconds) else fail("stale_timestamp")


# --- twilio ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwilioSpec:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL plus the sorted form params."""

    header: str = "x-twilio-signature"
    scheme: str = field(default="twilio", init=False)
    secret_kind: str = field(default="text", init=False)


def parse_twilio(t: ManifestTable) -> TwilioSpec:
    t.only("scheme")
    return TwilioSpec()


def _twilio_urls(url: str, parts: SplitResult, port: int | None) -> list[str]:
    """The URL as given plus its default-port twin: Twilio signs either form."""
    default = 443 if parts.scheme == "https" else 80
    urls = [url, parts.geturl()]
    if port is None:
        urls.append(parts._replace(netloc=f"{parts.netloc}:{default}").geturl())
    elif port == default:
        urls.append(parts._replace(netloc=parts.netloc.rpartition(":")[0]).geturl())
    return list(dict.fromkeys(urls))


# Twilio's largest webhooks carry well under a hundred parameters. The cap bounds what an
# unauthenticated request costs before its signature is known bad: the per-field work is Python.
MAX_FORM_FIELDS = 256
_DIGEST_SIZES = {hashlib.sha1: 20, hashlib.sha256: 32}
_PLUS = bytes.maketrans(b"+", b" ")
_PLUS_PERCENT = bytes.maketrans(b"+%", b" =")


def _unquote(part: bytes) -> bytes | None:
    """Form decoding of one name or value (``+`` is a space, ``%XX`` a byte), at C speed.

    ``binascii.a2b_qp`` decodes ``=XX``: with ``%`` turned into ``=`` (one ``translate``), a
    lone ``%`` (no two hex digits after it) comes out as ``=``, or is dropped at the very end;
    else every escape shortens the text by two, and the length tells. None for a part Twilio
    never sends: a lone ``%``, or ``%`` beside a raw ``=``, CR or LF (which QP would read as
    its own escapes and soft line breaks).
    """
    if b"%" not in part:
        return part.translate(_PLUS)
    if b"=" in part or b"\r" in part or b"\n" in part:
        return None
    quoted = part.translate(_PLUS_PERCENT)
    decoded = binascii.a2b_qp(quoted)
    if b"=" not in decoded and not quoted.endswith(b"="):
        return decoded
    # An escaped "=" (%3D) is a "=" too: count.
    return decoded if len(quoted) - len(decoded) == 2 * part.count(b"%") else None


def _twilio_params(body: bytes) -> list[bytes] | None:
    """Form params as Twilio concatenates them: name+value, sorted by name then value.

    Parsed as ``parse_qsl(keep_blank_values=True)`` does, on the raw bytes. Repeated identical
    pairs are kept by Twilio's Node helper and collapsed by its Python one; both forms are tried.
    None when the body cannot be a form Twilio sent (too many fields, see :func:`_unquote`).
    """
    pieces = body.split(b"&", MAX_FORM_FIELDS)  # never more than the cap's worth of work
    if len(pieces) > MAX_FORM_FIELDS:
        return None
    items = []
    for piece in pieces:
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        if b"%" in piece:
            decoded_name, decoded_value = _unquote(name), _unquote(value)
            if decoded_name is None or decoded_value is None:
                return None
            items.append((decoded_name, decoded_value))
        else:
            items.append((name.translate(_PLUS), value.translate(_PLUS)))
    items.sort()
    forms = [b"".join(k + v for k, v in items)]
    if len(set(items)) != len(items):
        forms.append(b"".join(k + v for k, v in sorted(set(items))))
    return list(dict.fromkeys(forms))


def _twilio_mac(key: bytes, url: bytes, params: bytes, digest: Any) -> bytes:
    mac = hmac.new(key, url, digest)
    mac.update(params)  # no copy of a 256 KiB form per URL variant
    return base64.b64encode(mac.digest())


def verify_twilio(
    spec: TwilioSpec, secrets: Sequence[str], req: SignedRequest, now: float
) -> Verdict:
    provided = req.headers.get(spec.header, "")
    if not provided:
        return fail("missing_signature")
    # Twilio's SharedKey webhooks name their algorithm; the Auth Token signature is HMAC-SHA1.
    settings = req.headers.get("x-twilio-webhooks-signature-settings", "")
    named = [
        v.strip()
        for k, _, v in (p.partition("=") for p in settings.split(","))
        if k.strip() == "algorithm" and v.strip()
    ]
    digest = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}.get(
        (named or ["HMAC_SHA1"])[0].upper()
    )
    if digest is None:
        return fail("unsupported_algorithm")
    try:
        parts = urlsplit(req.url)
        port = parts.port
    except ValueError:
        return fail("bad_url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return fail("bad_url")
    given = header_bytes(provided)
    # Cheap things first: a value that cannot be this digest's base64 needs no body work.
    if len(given) != 4 * -(-_DIGEST_SIZES[digest] // 3):
        return fail("bad_signature")
    # A JSON body is not in the signed string: the URL carries its hash instead.
    body_hash = next((v for k, v in parse_qsl(parts.query) if k == "bodySHA256"), None)
    params = [b""] if body_hash is not None else _twilio_params(req.body)
    if params is None:
        return fail("bad_form")
    urls = _twilio_urls(req.url, parts, port)
    if not any(
        matches(_twilio_mac(utf8(s), utf8(url), p, digest), [given])
        for url in urls
        for p in params
        for s in secrets
    ):
        return fail("bad_signature")
    if body_hash is not None and not hmac.compare_digest(
        hashlib.sha256(req.body).hexdigest().encode(), header_bytes(body_hash)
    ):
        return fail("bad_body_hash")
    return OK

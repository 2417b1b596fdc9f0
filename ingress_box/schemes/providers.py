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


def _twilio_params(body: bytes) -> list[bytes]:
    """Form params as Twilio concatenates them: name+value, sorted by name then value.

    Repeated identical pairs are kept by Twilio's Node helper and collapsed by its Python one;
    both forms are tried. surrogateescape keeps every body byte as it came.
    """
    text = body.decode("utf-8", "surrogateescape")
    pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")
    items = sorted(
        (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for k, v in pairs
    )
    forms = [b"".join(k + v for k, v in items), b"".join(k + v for k, v in sorted(set(items)))]
    return list(dict.fromkeys(forms))


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
    # A JSON body is not in the signed string: the URL carries its hash instead.
    body_hash = next((v for k, v in parse_qsl(parts.query) if k == "bodySHA256"), None)
    params = [b""] if body_hash is not None else _twilio_params(req.body)
    given = header_bytes(provided)
    signed = (utf8(url) + p for url in _twilio_urls(req.url, parts, port) for p in params)
    if not any(
        matches(base64.b64encode(hmac.new(utf8(s), msg, digest).digest()), [given])
        for msg in list(signed)
        for s in secrets
    ):
        return fail("bad_signature")
    if body_hash is not None and not hmac.compare_digest(
        hashlib.sha256(req.body).hexdigest().encode(), header_bytes(body_hash)
    ):
        return fail("bad_body_hash")
    return OK

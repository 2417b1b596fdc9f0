"""One signer per built-in plugin: the headers its provider sends with ``body``, signed with
``secret``.

Every signer has the same shape, so a test can pick one per plugin from :data:`SIGNERS`:

    sign_generic(secret, body, *, at=None, msg_id=None, url="") -> headers

``at`` is the unix second the provider signs at (now unless given; only timestamped schemes use
it), ``msg_id`` the provider's delivery id (sent in the provider's own header where it has one),
``url`` the URL the provider called (only Twilio signs it). Headers that say nothing about the
signature or the delivery (content-type, a conversation id) are the caller's.

Where the provider publishes a library, the library signs (twilio's RequestValidator,
standardwebhooks); elsewhere the documented recipe does, checked against the provider's library
where one exists (Stripe) or the documented example (GitHub) by the tests. The libraries are
imported where used, so this module loads with the standard library alone (the single-file smoke
test runs outside the virtualenv).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl


class Signer(Protocol):
    def __call__(
        self,
        secret: str,
        body: bytes,
        *,
        at: int | None = None,
        msg_id: str | None = None,
        url: str = "",
    ) -> dict[str, str]: ...


def hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _now(at: int | None) -> int:
    return int(time.time()) if at is None else at


def sign_generic(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """X-Signature: sha256=hex(HMAC-SHA256(secret, body)); the id in X-Delivery."""
    headers = {"x-signature": "sha256=" + hmac_hex(secret, body)}
    if msg_id is not None:
        headers["x-delivery"] = msg_id
    return headers


def sign_meta(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """X-Hub-Signature-256 over the raw body, keyed by the app secret (Meta sends no id)."""
    return {"x-hub-signature-256": "sha256=" + hmac_hex(secret, body)}


def sign_github(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """GitHub's X-Hub-Signature-256, its event name, and its per-delivery GUID."""
    headers = {"x-hub-signature-256": "sha256=" + hmac_hex(secret, body), "x-github-event": "ping"}
    if msg_id is not None:
        headers["x-github-delivery"] = msg_id
    return headers


def sign_chatwoot(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """sha256=hex(HMAC-SHA256(secret, "{timestamp}.{body}")) with the timestamp beside it."""
    stamp = _now(at)
    headers = {
        "x-chatwoot-signature": "sha256=" + hmac_hex(secret, f"{stamp}.".encode() + body),
        "x-chatwoot-timestamp": str(stamp),
    }
    if msg_id is not None:
        headers["x-chatwoot-delivery"] = msg_id
    return headers


def sign_stripe(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """As Stripe documents it: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<body>"))."""
    stamp = _now(at)
    digest = hmac_hex(secret, f"{stamp}.".encode() + body)
    return {"stripe-signature": f"t={stamp},v1={digest}"}


def sign_twilio(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """twilio's own RequestValidator: the URL plus the form params (none for a JSON body, whose
    hash rides in the URL as bodySHA256)."""
    from twilio.request_validator import RequestValidator

    form = "bodySHA256=" not in url
    params = dict(parse_qsl(body.decode(), keep_blank_values=True)) if form else {}
    signature: str = RequestValidator(secret).compute_signature(url, params)
    headers = {"x-twilio-signature": signature}
    if msg_id is not None:
        headers["i-twilio-idempotency-token"] = msg_id
    return headers


def sign_telegram(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """Telegram signs nothing: it echoes setWebhook's secret_token in a header."""
    return {"x-telegram-bot-api-secret-token": secret}


def _standard(secret: str, body: bytes, msg_id: str, at: int | None) -> dict[str, str]:
    import standardwebhooks

    stamp = _now(at)
    when = datetime.fromtimestamp(stamp, tz=UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def sign_standard(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """The standardwebhooks library; a sender keeps one id per event (derived from the body)."""
    return _standard(secret, body, msg_id or "msg_" + hashlib.sha256(body).hexdigest()[:16], at)


def sign_supabase(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """Standard Webhooks with the dashboard's "v1,whsec_..." secret; every attempt gets a fresh
    webhook-id, as Supabase's hooks do."""
    return _standard(secret.removeprefix("v1,"), body, msg_id or str(uuid.uuid4()), at)


def sign_waha(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """WAHA's webhook hmac: X-Webhook-Hmac = hex(HMAC-SHA512(key, body)); the id in
    X-Webhook-Request-Id, the time (milliseconds) in X-Webhook-Timestamp."""
    digest = hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()
    headers = {
        "x-webhook-hmac": digest,
        "x-webhook-hmac-algorithm": "sha512",
        "x-webhook-timestamp": str(_now(at) * 1000),
    }
    if msg_id is not None:
        headers["x-webhook-request-id"] = msg_id
    return headers


def sign_evolution(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """Evolution signs nothing: its webhook's static headers carry the token (Evolution sends
    no delivery id)."""
    return {"x-ingress-token": secret}


def sign_gowa(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """GOWA: X-Hub-Signature-256 = sha256=hex(HMAC-SHA256(secret, body)); no delivery id."""
    return {"x-hub-signature-256": "sha256=" + hmac_hex(secret, body)}


def sign_openwa(
    secret: str, body: bytes, *, at: int | None = None, msg_id: str | None = None, url: str = ""
) -> dict[str, str]:
    """OpenWA: X-OpenWA-Signature = sha256=hex(HMAC-SHA256(secret, body)); the id in
    X-OpenWA-Idempotency-Key."""
    headers = {"x-openwa-signature": "sha256=" + hmac_hex(secret, body)}
    if msg_id is not None:
        headers["x-openwa-idempotency-key"] = msg_id
    return headers


SIGNERS: dict[str, Signer] = {
    "generic": sign_generic,
    "meta": sign_meta,
    "github": sign_github,
    "chatwoot": sign_chatwoot,
    "stripe": sign_stripe,
    "twilio": sign_twilio,
    "telegram": sign_telegram,
    "standard-webhooks": sign_standard,
    "supabase": sign_supabase,
    "waha": sign_waha,
    "evolution": sign_evolution,
    "gowa": sign_gowa,
    "openwa": sign_openwa,
}

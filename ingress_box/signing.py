"""Outbound signatures per Standard Webhooks (https://www.standardwebhooks.com/).

``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` with the key
from a ``whsec_<base64>`` secret, so any Standard Webhooks library verifies what we send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        # Pad like the reference libraries do, so unpadded secrets from other tools still work.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as exc:
        raise ValueError("outbound secret is not whsec_<base64>") from exc
    if not key:
        raise ValueError("outbound secret is empty")
    return key


def sign(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>``; the body as raw bytes."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def generate_outbound_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")

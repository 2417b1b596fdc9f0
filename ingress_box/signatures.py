"""Pure webhook verifiers: raw bytes, headers, secrets and ``now`` in, a :class:`Verdict` out.

Each scheme is a frozen spec dataclass, parsed from a manifest's ``verify`` table, plus a verify
function; :data:`SCHEMES` maps a scheme name to both (see ``plugins.py`` for adding one). The
schemes live in :mod:`ingress_box.schemes`; this module is the one the rest of the package imports.
Nothing here does I/O or knows an HTTP framework; the clock is injected so replay windows are
testable.

What every scheme shares, because each one was a bug somewhere:
- the signed content is built from the exact raw body bytes, never a decoded or re-serialized form;
- an empty secret list (or only empty secrets) fails closed with ``no_secret``;
- every valid secret is tried, so the previous one keeps working during a rotation grace window;
- comparisons are ``hmac.compare_digest`` on bytes (``str`` operands must be ASCII, and header
  values from the wire need not be);
- a declared timestamp is checked against a tolerance that defaults to 300 s, never "reject all".
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from secrets import token_bytes, token_urlsafe
from typing import Any, NamedTuple

from .schemes.base import (
    DEFAULT_TOLERANCE_SECONDS,
    ManifestTable,
    SignedRequest,
    Verdict,
    VerifySpec,
    fail,
)
from .schemes.keyed import (
    HmacSpec,
    NoneSpec,
    SharedSecretSpec,
    parse_hmac,
    parse_none,
    parse_shared,
    render_template,
    verify_hmac,
    verify_none,
    verify_shared,
)
from .schemes.providers import (
    StandardWebhooksSpec,
    StripeSpec,
    TwilioSpec,
    parse_standard,
    parse_stripe,
    parse_twilio,
    verify_standard,
    verify_stripe,
    verify_twilio,
    whsec_key,
)

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "SCHEMES",
    "HmacSpec",
    "ManifestTable",
    "NoneSpec",
    "Scheme",
    "SharedSecretSpec",
    "SignedRequest",
    "StandardWebhooksSpec",
    "StripeSpec",
    "TwilioSpec",
    "Verdict",
    "VerifySpec",
    "generate_secret",
    "parse_verify_spec",
    "render_template",
    "verify",
    "whsec_key",
]


class Scheme(NamedTuple):
    """A scheme: how to read its manifest params, and how to check a request with them."""

    parse: Callable[[ManifestTable], VerifySpec]
    verify: Callable[[Any, Sequence[str], SignedRequest, float], Verdict]
    signed: bool = True  # False: no secret involved, so no "no_secret" check


SCHEMES: dict[str, Scheme] = {
    "hmac": Scheme(parse_hmac, verify_hmac),
    "hmac-sha256": Scheme(parse_hmac, verify_hmac),
    "shared-secret": Scheme(parse_shared, verify_shared),
    "standard-webhooks": Scheme(parse_standard, verify_standard),
    "stripe": Scheme(parse_stripe, verify_stripe),
    "twilio": Scheme(parse_twilio, verify_twilio),
    "none": Scheme(parse_none, verify_none, signed=False),
}


def parse_verify_spec(table: Mapping[str, Any], file: str, field: str) -> VerifySpec:
    """Read a manifest's ``verify`` table; a ManifestError names ``file`` and ``field.key``."""
    t = ManifestTable(table, file, field)
    name = t.required_text("scheme")
    if name not in SCHEMES:
        raise t.error("scheme", f"unknown scheme {name!r} (known: {', '.join(sorted(SCHEMES))})")
    return SCHEMES[name].parse(t)


def verify(spec: VerifySpec, secrets: Sequence[str], request: SignedRequest, now: float) -> Verdict:
    """Check ``request`` against every valid secret; pass if any one verifies."""
    scheme = SCHEMES.get(spec.scheme)
    if scheme is None:
        return fail("unknown_scheme")
    usable = [s for s in secrets if s.strip()]
    if scheme.signed and not usable:
        return fail("no_secret")
    return scheme.verify(spec, usable, request, now)


def generate_secret(spec: VerifySpec) -> str:
    """A fresh strong secret in the form the scheme expects."""
    if spec.secret_kind == "whsec":
        return "whsec_" + base64.b64encode(token_bytes(24)).decode()
    return token_urlsafe(32)
